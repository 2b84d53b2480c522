"""The serving artifact: a self-describing folder written by ``lifelong export RUN --out ARTIFACT``.

Layout::

    manifest.json            format, library version, model type and task, the sha256 and size of every file
    config.json              the model config (``model_type`` + fields; vocabulary sizes included)
    serving.json             how requests become batches: L, the batch fields the model reads, protocol,
                             the default of ``exclude_seen``, the dataset's fingerprint
    model.safetensors        the best checkpoint's weights
    vocab.json               raw ids per field, in vocabulary-index order from index 2 (as the dataset's)
    items.parquet            the item table: item_id -> item_idx, cate_idx[, attr_idx][, embedding][, title]
    users.parquet            user_id -> the user features (only when the model reads user features)
    item_vectors.safetensors retrieval models: ``vectors`` (n_items, D), row = item vocabulary index
    index/<kind>/            retrieval models: faiss indexes over those vectors (``exact`` always; ``ivf`` or
                             ``hnsw`` when asked), as :meth:`lifelong.index.ItemIndex.save` writes them

Loading (:func:`load_artifact`) verifies every file of the manifest (present, same size, same sha256)
before reading any of them and reads only formats that cannot run code (JSON, safetensors, Parquet,
``.npy`` without pickle, faiss). A missing, truncated, tampered or mismatched file is a
:class:`lifelong.errors.UserError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifelong.errors import UserError, read_json
from lifelong.outputs import OutputKind, check_output, make_temporary, remove_temporary, replace_folder

FORMAT = "lifelong-artifact/1"
INDEX_KINDS = ("exact", "ivf", "hnsw")


def _is_artifact(folder: Path) -> bool:
    try:
        value = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(value, dict) and str(value.get("format") or "").startswith("lifelong-artifact/")


ARTIFACT = OutputKind(
    "serving artifact", "manifest.json", _is_artifact,
    lambda e: e in {"manifest.json", "config.json", "serving.json", "model.safetensors", "vocab.json",
                    "items.parquet", "users.parquet", "item_vectors.safetensors", "index"},
)


def sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def export_artifact(run: str | Path, out: str | Path, *, index: str | None = None,
                    index_params: dict[str, Any] | None = None, data: str | Path | None = None,
                    overwrite: bool = False, threads: int | None = None) -> dict:
    """Write the artifact of ``run``'s best checkpoint to ``out``; return its manifest.

    Args:
        run: a run folder written by ``lifelong train``.
        out: the artifact folder to create (an existing non-empty folder only with ``overwrite``, and only
            an artifact lifelong wrote).
        index: retrieval models: an approximate index to build beside the exact one (``ivf`` or ``hnsw``).
        index_params: its parameters (:mod:`lifelong.index`: ``nlist``, ``nprobe``, ``M``, ``ef_search``...).
        data: the run's dataset when it moved (its fingerprint is checked).
        overwrite: replace an artifact lifelong wrote at ``out``.
        threads: faiss threads for building the indexes.
    """
    import polars as pl
    import torch
    from safetensors.torch import save_file

    import lifelong
    from lifelong.dataset.store import load_dataset
    from lifelong.index import ItemIndex, check_params
    from lifelong.models import build_model, config_from_dict
    from lifelong.models.retrieval import RetrievalModel
    from lifelong.train.checkpoint import load_model_config, load_weights
    from lifelong.train.run import check_run_dataset, read_run, run_dataset_path

    run, out = Path(run), Path(out)
    if index is not None and index not in ("ivf", "hnsw"):
        raise UserError(f"--index must be ivf or hnsw (the exact index is always written), got {index!r}")
    params = dict(index_params or {})
    if params and index is None:
        raise UserError("--index-param needs --index ivf|hnsw")
    if index is not None:
        try:
            check_params(index, params)
        except ValueError as error:
            raise UserError(f"--index-param: {error}") from None
    resolved = read_run(run)
    check_output(out, ARTIFACT, inputs=[run], overwrite=overwrite)
    best = run / "checkpoints" / "best"
    if not best.is_dir():
        raise UserError(f"{run} has no best checkpoint ({best} is missing): the run ended before its first epoch "
                        f"finished; resume it (`lifelong train --out {run} --resume`) before exporting")
    dataset_path = Path(data) if data is not None else Path(run_dataset_path(resolved))
    if not dataset_path.exists():
        raise UserError(f"the dataset of {run} is not at {dataset_path} any more; pass --data with its new place "
                        f"(export copies its item table and vocabularies)")
    dataset = load_dataset(dataset_path)
    check_run_dataset(resolved, dataset, run)
    model_config = load_model_config(best)
    config = config_from_dict(model_config)
    model = build_model(model_config)
    load_weights(best, model)
    model.eval()
    task = config.task
    if index is not None and task != "retrieval":
        raise UserError(f"--index builds an item index for retrieval models; {config.model_type} is a ranking model")
    if task == "retrieval" and type(model).prepare_retrieval is not RetrievalModel.prepare_retrieval:
        raise UserError(f"{config.model_type} fits retrieval state from the training users before every "
                        f"evaluation (prepare_retrieval); serving such a model is not supported yet: export "
                        f"another retrieval model")
    train = resolved["train"]
    protocol = (dataset.manifest.get("protocol") or {}).get("name")
    needs = config.batch_needs()
    serving = {
        "model_type": config.model_type,
        "task": task,
        "max_length": int(train.get("max_length", 50)),
        "with_timestamps": bool(needs.get("with_timestamps", False)),
        "feature_groups": list(needs.get("features", ())),
        "has_behavior": dataset.event_behaviors is not None,
        "protocol": protocol,
        # P2 removes the input history's items from the ranking, P3 does not (docs: PROTOCOLS.md)
        "exclude_seen": protocol != "mi-split",
        "multi_interest": bool(getattr(model, "multi_interest", False)),
        "dataset_fingerprint": dataset.manifest.get("fingerprint"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temporary(out)
    try:
        shutil.copyfile(best / "model.safetensors", tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(model_config, indent=2))
        (tmp / "serving.json").write_text(json.dumps(serving, indent=2))
        shutil.copyfile(dataset.path / "vocab.json", tmp / "vocab.json")
        columns = pl.read_parquet_schema(dataset.path / "items.parquet")
        keep = [c for c in ("item_id", "item_idx", "cate_idx", "attr_idx", "embedding", "title") if c in columns]
        items = pl.read_parquet(dataset.path / "items.parquet", columns=keep).filter(pl.col("item_idx") > 0)
        items.write_parquet(tmp / "items.parquet")
        if "user" in serving["feature_groups"]:
            names = [f"uf_{f['name']}" for f in dataset.features if f["group"] == "user"]
            pl.read_parquet(dataset.path / "users.parquet", columns=["user_id", *names]).write_parquet(
                tmp / "users.parquet")
        indexes = []
        if task == "retrieval":
            with torch.no_grad():
                vectors = model.item_vectors().detach().float().contiguous()  # (n_items, D)
            save_file({"vectors": vectors}, str(tmp / "item_vectors.safetensors"))
            for kind, kind_params in [("exact", {}), *([(index, params)] if index else [])]:
                ItemIndex.build(vectors.numpy(), kind, threads=threads, **kind_params).save(tmp / "index" / kind)
                indexes.append(kind)
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != ".lifelong-tmp"):
            files[path.relative_to(tmp).as_posix()] = {"sha256": sha256(path), "bytes": path.stat().st_size}
        import faiss

        manifest = {
            "format": FORMAT,
            "library_version": lifelong.__version__,
            "torch_version": torch.__version__.split("+")[0],
            "faiss_version": faiss.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "run": str(run.resolve()),
            "model_type": config.model_type,
            "task": task,
            "indexes": indexes,
            "files": files,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        (tmp / ".lifelong-tmp").unlink()
        if out.exists():
            replace_folder(out, ARTIFACT, inputs=[run])
        os.replace(tmp, out)
    except BaseException:
        if tmp.exists():
            (tmp / ".lifelong-tmp").write_text("{}")
            remove_temporary(tmp)
        raise
    return manifest


@dataclass
class Artifact:
    """A verified artifact folder: its manifest, configs and the paths of its files (nothing else is read)."""

    path: Path
    manifest: dict
    model_config: dict
    serving: dict
    vocab: dict
    indexes: list[str] = field(default_factory=list)

    def file(self, name: str) -> Path:
        return self.path / name


def _refuse(path: Path, name: str, why: str) -> UserError:
    return UserError(f"artifact {path}: {name} {why}; the artifact was changed after `lifelong export` wrote it: "
                     f"export it again (`lifelong export RUN --out {path} --overwrite`)")


def verify_artifact(path: str | Path) -> dict:
    """Check every file the manifest lists (present, same size, same sha256); return the manifest."""
    import lifelong

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not an artifact folder (it does not exist or is a file); pass a folder written "
                        f"by `lifelong export RUN --out FOLDER`")
    if not (path / "manifest.json").exists():
        raise UserError(f"{path} is not a lifelong artifact: it has no manifest.json (write one with "
                        f"`lifelong export RUN --out {path}`)")
    manifest = read_json(path / "manifest.json", "the artifact's manifest")
    if not isinstance(manifest, dict) or not str(manifest.get("format", "")).startswith("lifelong-artifact/"):
        raise UserError(f"{path / 'manifest.json'} is not a lifelong artifact manifest")
    if manifest["format"] != FORMAT:
        raise UserError(f"{path} is an artifact of format {manifest['format']!r}; this lifelong "
                        f"({lifelong.__version__}) reads {FORMAT!r}: export the run again with this version")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise UserError(f"{path / 'manifest.json'} lists no files; the manifest is damaged: export again")
    for name, entry in files.items():
        file = path / name
        if not isinstance(entry, dict) or not {"sha256", "bytes"} <= set(entry) or ".." in Path(name).parts:
            raise _refuse(path, "manifest.json", f"has a malformed entry for {name!r}")
        if not file.is_file():
            raise _refuse(path, name, "is missing")
        size = file.stat().st_size
        if size != entry["bytes"]:
            what = "is truncated" if size < entry["bytes"] else "is longer than exported"
            raise _refuse(path, name, f"{what} ({size:,} bytes, the manifest says {entry['bytes']:,})")
        if sha256(file) != entry["sha256"]:
            raise _refuse(path, name, "does not match its checksum in manifest.json (sha256 differs)")
    for needed in ("config.json", "serving.json", "model.safetensors", "vocab.json", "items.parquet"):
        if needed not in files:
            raise _refuse(path, "manifest.json", f"does not list {needed}")
    return manifest


def load_artifact(path: str | Path) -> Artifact:
    """Verify ``path`` (:func:`verify_artifact`) and read its JSON files; a mismatch between them (another
    model type, another task) is a :class:`UserError` naming the file."""
    path = Path(path)
    manifest = verify_artifact(path)
    model_config = read_json(path / "config.json", "the artifact's model config")
    serving = read_json(path / "serving.json", "the artifact's serving options")
    vocab = read_json(path / "vocab.json", "the artifact's vocabularies")
    if not isinstance(model_config, dict) or model_config.get("model_type") != manifest.get("model_type"):
        raise _refuse(path, "config.json", f"is not the config of the manifest's {manifest.get('model_type')!r} model")
    if not isinstance(serving, dict) or serving.get("task") != manifest.get("task") or "max_length" not in serving:
        raise _refuse(path, "serving.json", "does not match the manifest")
    if not isinstance(vocab, dict) or not isinstance(vocab.get("item"), list):
        raise _refuse(path, "vocab.json", "holds no item vocabulary")
    indexes = [k for k in manifest.get("indexes", []) if k in INDEX_KINDS]
    if manifest.get("task") == "retrieval":
        missing = [n for n in ("item_vectors.safetensors", "index/exact/index.faiss") if n not in manifest["files"]]
        if missing:
            raise _refuse(path, "manifest.json",
                          f"does not list {', '.join(missing)} (a retrieval artifact needs them)")
    return Artifact(path, manifest, model_config, serving, vocab, indexes)


def read_tensors(artifact: Artifact, name: str) -> dict:
    """The tensors of a verified safetensors file of the artifact (a damaged one: a UserError naming it)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(artifact.file(name)))
    except Exception as error:  # safetensors' own error type for every kind of damage
        raise _refuse(artifact.path, name, f"is not a readable safetensors file ({str(error).splitlines()[0][:200]})")
