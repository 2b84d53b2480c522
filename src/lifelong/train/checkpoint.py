"""Checkpoints: weights and optimizer tensors in safetensors, everything else in JSON; never pickle.

A checkpoint is a folder written next to its final place and swapped in with renames, so a crash
never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lifelong.errors import UserError, read_json


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into flat tensors and JSON-able hyper-parameters."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().clone().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: Path, model: nn.Module, model_config: dict, trainer_state: dict,
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write ``model.safetensors``, ``config.json``, ``trainer_state.json`` (and the optimizer) atomically."""
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(model_config, indent=2))
    if optimizer is not None:
        tensors, meta = optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    old = folder.parent / f".{folder.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_model_config(folder: Path) -> dict:
    """A checkpoint's model config (``config.json``), checked against the registry; a malformed or
    incomplete one is a :class:`UserError` naming the file."""
    from lifelong.models import config_from_dict

    path = Path(folder) / "config.json"
    values = read_json(path, "the checkpoint's model config")
    if not isinstance(values, dict):
        raise UserError(f"{path} must hold the model's config (a JSON object); the checkpoint is damaged")
    try:
        return config_from_dict(values).to_dict()
    except (TypeError, ValueError) as error:
        raise UserError(f"{path} is not a valid model config ({error}); the checkpoint is damaged or was "
                        f"written by another version") from None


def _read_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise UserError(f"{path} is missing: the checkpoint is incomplete ({what})")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error type for every kind of damage
        reason = "the file is empty" if path.stat().st_size == 0 else str(error).splitlines()[0][:200]
        raise UserError(f"{path} is not a readable safetensors file ({reason}); the checkpoint is damaged: "
                        f"resume from another checkpoint or train again") from None


def load_weights(folder: Path, model: nn.Module) -> None:
    """Load ``model.safetensors`` into ``model``; damaged weights, or weights of another config, are a
    :class:`UserError` naming the file."""
    path = Path(folder) / "model.safetensors"
    weights = _read_tensors(path, "weights")
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()][1:]
        detail = "; ".join(lines)[:300] or str(error)[:300]
        raise UserError(f"{path} does not match the model of {Path(folder) / 'config.json'} ({detail}); the "
                        f"checkpoint's weights and config belong to different models") from None


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Restore weights (and optimizer) from ``folder``; return its trainer state."""
    folder = Path(folder)
    load_weights(folder, model)
    if optimizer is not None and (folder / "optimizer.safetensors").exists():
        meta = read_json(folder / "optimizer.json", "the checkpoint's optimizer state")
        try:
            load_optimizer(optimizer, _read_tensors(folder / "optimizer.safetensors", "optimizer state"), meta)
        except (KeyError, ValueError, RuntimeError) as error:
            raise UserError(f"{folder / 'optimizer.safetensors'} does not match the model's optimizer ({error}); "
                            f"the checkpoint is damaged") from None
    state = read_json(folder / "trainer_state.json", "the checkpoint's trainer state")
    if not isinstance(state, dict) or "epoch" not in state:
        raise UserError(f"{folder / 'trainer_state.json'} is not a trainer state; the checkpoint is damaged")
    return state
