"""The Python API: the functions the command line calls, for notebooks and scripts.

Each ``lifelong`` command is a thin wrapper over one function here: it parses its options, calls the
function and prints what it returns. The same mistakes are refused the same way: a :class:`UserError`
(a ``ValueError``) whose message says what is wrong, where, and how to fix it.

>>> import lifelong
>>> data = lifelong.prepare("csv", "log.csv", "data", columns={"user_id": "uid", "item_id": "iid",
...                         "timestamp": "ts"})                                      # doctest: +SKIP
>>> results = lifelong.train(data, "din", "runs/din", epochs=2)                       # doctest: +SKIP
>>> lifelong.evaluate("runs/din")["auc"]                                             # doctest: +SKIP
>>> model = lifelong.load("runs/din")                                                # doctest: +SKIP
>>> model.rank(["i1", "i7"], ["i3", "i9"])                          # one logit each  # doctest: +SKIP

Importing this module is cheap: torch, polars and the models load when a function first needs them.
docs/python.md walks through the whole flow.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from lifelong.errors import UserError


# ------------------------------------------------------------------------------------------- config files


def _unique_key_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """YAML's safe loader, but a key given twice in one mapping is an error (as in TOML)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


CONFIG_SUFFIXES = (".toml", ".yaml", ".yml", ".json")


def read_config_file(path: Optional[str | Path]) -> dict[str, Any]:
    """Options from a TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON (``.json``) file; empty without a
    file. A file that does not parse (a duplicate key included) is a :class:`UserError` naming the file and
    the line. Dashes in keys become underscores (``batch-size`` is ``batch_size``)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path} {'is a folder' if path.is_dir() else 'does not exist'}; "
                        f"pass a TOML, YAML or JSON file of options")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"--config {path} cannot be read as text ({error})") from None
    if path.suffix == ".toml":
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise UserError(f"--config {path} is not valid TOML: {error}") from None
    elif path.suffix == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"--config {path} is not valid JSON (line {error.lineno}, column {error.colno}): "
                            f"{error.msg}") from None
    else:
        import yaml

        try:
            values = yaml.load(text, Loader=_unique_key_loader())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise UserError(f"--config {path} is not valid YAML{where}: "
                            f"{getattr(error, 'problem', None) or error}") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path} must hold a table of options (key = value lines)")
    return {key.replace("-", "_"): value for key, value in values.items()}


def parse_assignments(pairs: Iterable[str], what: str) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they can be (numbers, lists, booleans)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"{what} expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def train_options(config: Optional[str | Path | Mapping[str, Any]] = None,
                  model_options: Optional[Mapping[str, Any]] = None, **options: Any) -> dict[str, Any]:
    """The resolved train options (a :class:`lifelong.train.TrainConfig`'s fields) from a config file or
    mapping, ``model_options`` and keyword options, later ones winning; ``None`` values are not given.

    In a config, ``model`` is the model's name, or a table of model options holding ``model_type``;
    ``model_options`` is a table of model options too. An unknown key is a :class:`UserError` naming the
    file and the known keys."""
    from dataclasses import fields

    from lifelong.train.run import TrainConfig

    where = f"--config {config}" if isinstance(config, (str, Path)) else "config"
    values = read_config_file(config) if isinstance(config, (str, Path)) else dict(config or {})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{where}: unknown option(s) {', '.join(unknown)}; the known train options are "
                        f"{', '.join(sorted(known))} (model options go in a [model] or [model_options] table)")
    table = values.pop("model") if isinstance(values.get("model"), dict) else {}
    if not isinstance(values.get("model_options", {}), dict):
        raise UserError(f"{where}: model_options must be a table of model options")
    values["model_options"] = {**values.get("model_options", {}), **table, **dict(model_options or {})}
    if "model_type" in values["model_options"]:
        model_type = values["model_options"].pop("model_type")
        if values.get("model") not in (None, model_type):
            raise UserError(f"{where}: model {values['model']!r} and model_type {model_type!r} disagree; keep one")
        values["model"] = model_type
    values.update({k: str(v) if isinstance(v, Path) else v for k, v in options.items() if v is not None})
    return values


# ---------------------------------------------------------------------------------------------- the stages


def prepare(recipe: str, input: str | Path, out: str | Path, *, protocol: str = "ctr-din", seed: int = 2024,
            on_bad_rows: str = "error", columns: Optional[Mapping[str, str]] = None, timestamp_unit: str = "s",
            max_id_bytes: int = 256, max_train_per_user: Optional[int] = None, t_valid: Optional[int] = None,
            t_test: Optional[int] = None, positive_behaviors: Optional[str | Sequence[str]] = None,
            user_order: str = "random", min_events: Optional[int] = None, overwrite: bool = False) -> Path:
    """Validate a raw log and prepare it under a protocol; return the prepared dataset's folder.

    What ``lifelong prepare`` runs (the same options, ``columns`` as a mapping of lifelong's column names
    to the file's). The folder holds one sequence per user, the item table, the vocabularies (raw id ->
    index) and the protocol's samples; its ``manifest.json`` counts them.

    Args:
        recipe: ``csv``, ``movielens``, ``amazon-s3rec``, ``amazon-reviews``, ``taobao-userbehavior`` or
            ``synthetic-lifelong``.
        input: the raw file or folder.
        out: the dataset folder to create (an existing one only with ``overwrite``, and only one lifelong
            wrote).
        protocol: ``ctr-din`` (P1), ``seq-loo`` (P2), ``mi-split`` (P3), ``ctr-time`` (P4), ``ctr-long`` (P5).

    Example::

        data = lifelong.prepare("csv", "log.csv", "data/mylog",
                                columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts"})
        json.loads((data / "manifest.json").read_text())["n_users"]
    """
    from lifelong.data import load_recipe
    from lifelong.outputs import DATASET, check_output
    from lifelong.pipeline import ProtocolOptions, prepare as run_prepare

    if on_bad_rows not in ("error", "skip"):
        raise UserError(f"on_bad_rows (--on-bad-rows) must be 'error' or 'skip', got {on_bad_rows!r}")
    check_output(out, DATASET, inputs=[input], overwrite=overwrite)  # before the log is read
    if isinstance(positive_behaviors, str):
        positive_behaviors = positive_behaviors.split(",")
    options: dict[str, Any] = {"timestamp_unit": timestamp_unit, "max_id_bytes": max_id_bytes}
    if columns:
        options["columns"] = {str(k): str(v) for k, v in columns.items()}
    protocol_options = ProtocolOptions(
        name=protocol, seed=seed, max_train_per_user=max_train_per_user, t_valid=t_valid, t_test=t_test,
        positive_behaviors=tuple(positive_behaviors) if positive_behaviors else None,
        user_order=user_order, min_events=min_events,
    )
    log = load_recipe(recipe, input, on_bad_rows=on_bad_rows, **options)
    return Path(run_prepare(log, out, protocol_options, overwrite=overwrite))


def train(data: Optional[str | Path] = None, model: Optional[str] = None, out: Optional[str | Path] = None, *,
          config: Optional[str | Path | Mapping[str, Any]] = None, model_options: Optional[Mapping[str, Any]] = None,
          resume: bool = False, overwrite: bool = False, command: Optional[str] = None, **options: Any) -> dict:
    """Train a model on a prepared dataset into the run folder ``out``; return its results.

    What ``lifelong train`` runs. ``options`` are the train options (``epochs``, ``batch_size``, ``lr``,
    ``max_length``, ``patience``, ``seed``, ``progress``, ...: ``lifelong train --help``), ``model_options``
    the model's (``lifelong models``), ``config`` a TOML/YAML/JSON file or a mapping of both (keyword
    options win). The best validation epoch is evaluated on test. ``resume`` continues the interrupted run
    in ``out`` with its saved options; ``overwrite`` replaces a run lifelong wrote there.

    Returns the run's ``results.json`` (``best_epoch``, ``valid`` and ``test`` metrics: AUC, GAUC and
    logloss for a CTR model; hr@k, ndcg@k, recall@k for retrieval; the training throughput) with the
    ``model`` and the ``run`` folder.

    Example::

        results = lifelong.train("data/mylog", "din", "runs/din", epochs=2, model_options={"embedding_dim": 16})
        results["test"]["auc"]
    """
    from lifelong.train.loop import TrainConfig, train as run_train  # the submodule: lifelong.train forwards here
    from lifelong.train.run import read_run, run_dataset_path

    if resume and overwrite:
        raise UserError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    given = {"data": data, "model": model, "out": out, **options}
    if resume:
        if out is None:
            raise UserError("--resume needs --out RUN_DIR (the run to continue)")
        resolved = read_run(out)
        values = dict(resolved["train"])
        values["data"] = run_dataset_path(resolved)  # the absolute path (data=: the dataset moved)
        values.update({k: str(v) if isinstance(v, Path) else v for k, v in given.items() if v is not None})
    else:
        values = train_options(config, model_options, **given)
    if command is None:
        shown = ", ".join(f"{k}={v!r}" for k, v in given.items() if v is not None)
        command = f"lifelong.train({shown})"
    train_config = TrainConfig.from_dict(values)
    results = run_train(train_config, resume=resume, overwrite=overwrite, command=command)
    return {"model": train_config.model, "run": train_config.out, **results}


SPLITS = ("train", "valid", "test")


def evaluate(run: str | Path, split: str = "test", *, index: Optional[str] = None,
             index_params: Optional[Mapping[str, Any]] = None, data: Optional[str | Path] = None,
             device: str = "auto") -> dict:
    """Evaluate a run's best checkpoint on a split of its dataset; return the metrics (also written to
    ``RUN/eval_<split>[_<index>].json``).

    What ``lifelong evaluate`` runs. ``index`` (P3 multi-interest runs): retrieve through a faiss index,
    ``exact``, ``ivf`` or ``hnsw``, with ``index_params`` (ivf: nlist, nprobe; hnsw: M, ef_search,
    ef_construction). ``data``: the run's dataset when it moved (its fingerprint is checked).

    Example::

        metrics = lifelong.evaluate("runs/din", "valid")
        metrics["auc"], metrics["gauc"]
    """
    from lifelong.train.loop import evaluate_run

    if split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    spec = None
    if index_params and index is None:
        raise UserError("--index-param needs --index exact|ivf|hnsw")
    if index is not None:
        from lifelong.index import check_params

        params = dict(index_params or {})
        try:
            check_params(index, params)
        except ValueError as error:
            raise UserError(f"--index-param: {error}") from None
        spec = {"kind": index, **params}
    return evaluate_run(run, split, index=spec, data=data, device=device)


def load(run_or_artifact: str | Path, *, data: Optional[str | Path] = None, index: Optional[str] = None,
         threads: Optional[int] = None):
    """A trained model behind raw ids: a :class:`lifelong.serve.scorer.Scorer` from a run folder (written
    by :func:`train`) or an artifact (written by ``lifelong export``).

    ``rank(history, candidates)``: one logit per candidate, in order (a CTR model); ``retrieve(history,
    k)``: the top ``k`` raw item ids and their scores, best first (a retrieval model; the history's items
    are left out under P2). Histories are raw item ids, oldest first, batched exactly as the offline
    evaluation batches them; unknown ids map to the unknown index and are counted in ``.unknown``.
    ``data``: a run's dataset when it moved; ``index``: an artifact's faiss index (exact, ivf, hnsw).

    Example::

        model = lifelong.load("runs/din")
        model.rank(["i3", "i14", "i15"], ["i92", "i65"])       # [logit of i92, logit of i65]
        items, scores = lifelong.load("runs/sasrec").retrieve(["i3", "i14"], k=10)
    """
    from lifelong.serve.scorer import Scorer

    return Scorer.from_path(run_or_artifact, index=index, threads=threads, data=data)


def available_models() -> list[dict[str, Any]]:
    """The registered models, as ``lifelong models --json`` lists them: ``model_type``, ``task`` (ctr or
    retrieval), the ``protocols`` it trains on, a one-line ``summary`` and its ``options`` with defaults.

    Example::

        [m["model_type"] for m in lifelong.available_models() if m["task"] == "ctr"]
    """
    from lifelong.catalog import catalog

    return catalog()
