"""The model catalogue without importing torch: what ``lifelong models`` lists.

Importing the registry (:mod:`lifelong.models`) imports torch and every model, about two seconds; the
listing only needs each model's name, task, protocols, one-line summary and config fields. Those are
kept in the generated module :mod:`lifelong._catalog` together with a hash of the sources they come
from (``models/*.py`` and ``protocols/__init__.py``). :func:`catalog` uses the generated listing when the
hash still matches the sources; otherwise it builds the listing from the registry once and caches it under
the new hash (:func:`catalog`), so the listing is never stale. Regenerate the module after changing a
model::

    python -m lifelong.catalog     # rewrites src/lifelong/_catalog.py from the registry

(tests/test_output.py fails while the generated listing's content differs from the registry's.)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pprint
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent
GENERATED = PACKAGE / "_catalog.py"
HIDDEN_FIELDS = ("n_items", "n_cates", "n_behaviors", "features")  # filled from the dataset, not options


def source_hash() -> str:
    """SHA-256 of the sources the catalogue is derived from (file names and contents, in order)."""
    digest = hashlib.sha256()
    for path in [*sorted((PACKAGE / "models").glob("*.py")), PACKAGE / "protocols" / "__init__.py"]:
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """A config default as a JSON-safe value: tuples as lists, non-finite floats as strings ("inf")."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _summary(model_class: type) -> str:
    lines = [line.strip() for line in (model_class.__doc__ or "").strip().splitlines()]
    summary = []
    for line in lines:  # the docstring's first paragraph, as one line
        if not line:
            break
        summary.append(line)
    return " ".join(summary)


def build_catalog() -> list[dict[str, Any]]:
    """The catalogue from the registry itself (imports torch and every model)."""
    import dataclasses

    from lifelong.models import MODELS
    from lifelong.protocols import TASK_PROTOCOLS

    rows = []
    for name, (config_class, model_class) in sorted(MODELS.items()):
        options = {}
        for f in dataclasses.fields(config_class):
            if f.name in HIDDEN_FIELDS:
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            options[f.name] = _plain(default)
        rows.append({"model_type": name, "task": config_class.task,
                     "protocols": list(TASK_PROTOCOLS[config_class.task]), "summary": _summary(model_class),
                     "options": options})
    return rows


def cache_folder() -> Path:
    """Where a catalogue built for edited sources is kept (``$LIFELONG_CACHE``, else the user's cache)."""
    if os.environ.get("LIFELONG_CACHE"):
        return Path(os.environ["LIFELONG_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lifelong"


def catalog() -> list[dict[str, Any]]:
    """Each registered model: ``model_type``, ``task`` (ctr or retrieval), the ``protocols`` it trains on,
    a one-line ``summary`` and its config ``options`` with their defaults.

    Fast (no torch) while the generated listing matches the sources. After an edit of the sources the
    first call builds it from the registry and keeps it in :func:`cache_folder` under the sources' hash,
    so later calls are fast again (a cache that cannot be written only costs the speed)."""
    digest = source_hash()
    try:
        from lifelong import _catalog
    except ImportError:
        _catalog = None
    if _catalog is not None and getattr(_catalog, "SOURCE_HASH", None) == digest:
        return _catalog.MODELS
    cached = cache_folder() / f"catalog-{digest[:32]}.json"
    try:
        return json.loads(cached.read_text())
    except (OSError, ValueError):
        pass
    rows = build_catalog()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
        tmp.write_text(json.dumps(rows))
        os.replace(tmp, cached)
    except OSError:
        pass
    return rows


def write_generated(path: Path = GENERATED) -> Path:
    """Regenerate :mod:`lifelong._catalog` from the registry."""
    text = ('"""Generated by ``python -m lifelong.catalog`` from the model registry; do not edit."""\n\n'
            f"SOURCE_HASH = {source_hash()!r}\n\n"
            f"MODELS = {pprint.pformat(build_catalog(), width=110, sort_dicts=False)}\n")
    path.write_text(text)
    return path


if __name__ == "__main__":
    print(f"wrote {write_generated()}")
