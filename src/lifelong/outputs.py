"""The folders lifelong writes, and the one rule for replacing them: nothing lifelong did not make is deleted.

Each kind of output folder carries a marker written when lifelong creates it (a dataset its
``manifest.json``, a run its ``config.json``, the demo its ``demo.json``) and holds only the entries
lifelong writes there. A folder may be replaced (``--overwrite``) only when

- it carries its kind's marker,
- every entry in it is one lifelong writes into that kind of folder (a user's notes file next to the
  dataset's parquet files is not lifelong's to delete), and
- it is neither an input of the command nor an ancestor of one.

Otherwise the command refuses with a message saying why and what to do; nothing is touched. Temporary
folders (``.NAME.tmp-PID``) carry a marker file of their own, so a later run removes the stale ones a
killed run left behind, and only those.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from lifelong.errors import UserError

TMP_MARKER = ".lifelong-tmp"  # written first into every temporary folder lifelong makes


def _json_object(path: Path) -> dict:
    """The JSON object in ``path``; ``{}`` when the file is missing, unreadable or not a JSON object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _format_is(path: Path, prefix: str) -> bool:
    return str(_json_object(path).get("format") or "").startswith(prefix)


def _is_dataset(folder: Path) -> bool:
    return _format_is(folder / "manifest.json", "lifelong-dataset/")


def _is_run(folder: Path) -> bool:
    config = _json_object(folder / "config.json")
    # runs written before the format field: the resolved options, the model config and the command
    return str(config.get("format") or "").startswith("lifelong-run/") or {"train", "model", "command"} <= set(config)


def _is_demo(folder: Path) -> bool:
    return _format_is(folder / "demo.json", "lifelong-demo/")


@dataclass(frozen=True)
class OutputKind:
    """One kind of output folder: its name in messages, its marker test and the entries lifelong writes."""

    name: str
    marker: str
    made_by_lifelong: Callable[[Path], bool]
    entries: Callable[[str], bool]


DATASET = OutputKind(
    "prepared dataset", "manifest.json", _is_dataset,
    lambda e: e in {"manifest.json", "events.parquet", "users.parquet", "items.parquet", "vocab.json", "samples",
                    "rejected.csv"},
)
RUN = OutputKind(
    "training run", "config.json", _is_run,
    lambda e: e in {"config.json", "vocab.json", "metrics.jsonl", "checkpoints", "results.json",
                    "test_predictions.npz", "test_ranks.npz", "test_top50.npz"}
    or (e.startswith("eval_") and e.endswith(".json")),
)
DEMO = OutputKind("demo folder", "demo.json", _is_demo,
                  lambda e: e in {"demo.json", "data", "data-seq", "sumpool", "din", "sasrec", "results.csv",
                                  "report"})


TABLE_WORKDIR_ENTRIES = {"lifelong-table.json", "data", "runs", "table.json", "table.md", "summary.json",
                         "results.csv", "auc_by_length_beauty.png"}


def claim_workdir(work: str | Path, script: str) -> Path:
    """The working folder of a table script (``benchmarks/*_table.py``): created and marked
    (``lifelong-table.json``) when new or empty; an existing one is used only when it carries the marker
    or holds nothing but what a table script writes there (its datasets, runs and tables), so the script
    never overwrites a user's ``table.md`` in a folder they named by mistake."""
    work = Path(work)
    marker = work / "lifelong-table.json"
    if work.exists() and not work.is_dir():
        raise UserError(f"--workdir {work} is a file, not a folder; choose another --workdir")
    if work.is_dir() and not marker.exists():
        foreign = sorted(e.name for e in work.iterdir() if e.name not in TABLE_WORKDIR_ENTRIES)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise UserError(f"--workdir {work} holds files a table script did not write ({shown}); its tables and "
                            f"datasets would be written over yours: choose another --workdir")
    work.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        marker.write_text(json.dumps({"format": "lifelong-table/1", "script": script}) + "\n")
    return work


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path))).resolve()


def check_output(folder: str | Path, kind: OutputKind, *, inputs: Iterable[str | Path] = (),
                 overwrite: bool = False, option: str = "--out") -> None:
    """Refuse (:class:`UserError`) unless ``folder`` can be written as a ``kind`` folder.

    A folder that does not exist, or an empty one, is always fine. An existing one needs ``overwrite``
    and must be replaceable by the module's rule. ``inputs`` are the files and folders the command reads:
    the output may be neither one of them nor an ancestor of one. Also refused: a path that is a file,
    a parent that is a file, and a location that cannot be written (said before any input is read).
    """
    folder = Path(folder)
    where = _resolved(folder)
    for source in inputs:
        source = _resolved(Path(source))
        if where == source or where in source.parents:
            raise UserError(f"{option} {folder} {'is' if where == source else 'holds'} the input {source}; "
                            f"lifelong never writes over its input: choose another {option}")
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            raise UserError(f"{option} {folder} is a file, not a folder; choose another {option} "
                            f"(lifelong does not replace files it did not write)")
        if any(folder.iterdir()):
            if not overwrite:
                raise UserError(f"{option} {folder} already exists; pass --overwrite to replace it "
                                f"(only a {kind.name} lifelong wrote can be replaced) or choose another {option}")
            _check_replaceable(folder, kind, option)
    _check_writable(folder, option)


def _check_replaceable(folder: Path, kind: OutputKind, option: str) -> None:
    if folder.is_symlink():
        raise UserError(f"{option} {folder} is a symbolic link; lifelong does not replace it: choose another {option}")
    if not kind.made_by_lifelong(folder):
        raise UserError(f"{option} {folder} is not a {kind.name} lifelong wrote (no lifelong {kind.marker} in it), "
                        f"so --overwrite will not delete it; choose another {option} or empty the folder yourself")
    foreign = sorted(e.name for e in folder.iterdir() if not kind.entries(e.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(f"{option} {folder} holds files lifelong did not write there ({shown}), so --overwrite "
                        f"will not delete it; move them out or choose another {option}")


def _check_writable(folder: Path, option: str) -> None:
    """The nearest existing folder at or above ``folder`` must be a writable folder."""
    probe = folder if folder.exists() else folder.parent
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():  # a dangling link
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{option} {folder}: {probe} is a file, not a folder; choose another {option}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{option} {folder}: {probe} is not writable (read-only folder or no permission); "
                        f"choose another {option} or fix the permissions")


def replace_folder(folder: str | Path, kind: OutputKind, *, inputs: Iterable[str | Path] = (),
                   option: str = "--out") -> None:
    """Remove ``folder`` if it exists and lifelong may replace it; else refuse (nothing is touched).

    The folder is first renamed to a marked temporary sibling, so an interruption leaves either the
    old folder or a temporary that the next run cleans up."""
    folder = Path(folder)
    check_output(folder, kind, inputs=inputs, overwrite=True, option=option)
    if not folder.exists():
        return
    clean_stale_temporaries(folder)
    trash = folder.parent / f".{folder.name}.old-{os.getpid()}"
    remove_temporary(trash)
    os.replace(folder, trash)
    (trash / TMP_MARKER).write_text(json.dumps({"pid": os.getpid()}))
    shutil.rmtree(trash)


def make_temporary(folder: Path, tag: str = "tmp") -> Path:
    """A fresh temporary sibling of ``folder`` (``.NAME.tag-PID``) with the marker file inside; stale
    temporaries of ``folder`` from killed runs are removed first."""
    clean_stale_temporaries(folder)
    tmp = folder.parent / f".{folder.name}.{tag}-{os.getpid()}"
    if tmp.exists():
        remove_temporary(tmp)
    tmp.mkdir(parents=True)
    (tmp / TMP_MARKER).write_text(json.dumps({"pid": os.getpid()}))
    return tmp


def remove_temporary(tmp: Path) -> None:
    """Remove a temporary folder lifelong made (it holds the marker file); leave anything else alone."""
    if tmp.is_dir() and not tmp.is_symlink() and (tmp / TMP_MARKER).exists():
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID`` / ``.NAME.old-PID`` siblings of ``folder`` that lifelong made (marker
    inside) for a process that no longer runs; return what was removed."""
    removed = []
    parent = folder.parent
    if not parent.is_dir():
        return removed
    for candidate in parent.glob(f".{folder.name}.*-*"):
        tag_pid = candidate.name[len(folder.name) + 2:]
        tag, _, pid = tag_pid.rpartition("-")
        if tag not in ("tmp", "old") or not pid.isdigit() or not (candidate / TMP_MARKER).exists():
            continue
        if int(_json_object(candidate / TMP_MARKER).get("pid") or pid) != int(pid) or _alive(int(pid)):
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
    return removed
