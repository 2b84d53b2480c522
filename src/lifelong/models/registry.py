"""The model registry: ``model_type`` -> (config class, model class), with typed, validated configs."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class ModelOutput:
    """What a ranking model returns.

    Attributes:
        logits: (B,) click logits.
        aux_losses: named extra loss terms (already weighted) that the loop adds to the CTR loss.
    """

    logits: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """Base of every model config. Vocabulary sizes are filled from the dataset, so a checkpoint's
    config alone rebuilds the model."""

    model_type: ClassVar[str] = ""
    task: ClassVar[str] = "ctr"  # "ctr" (ModelOutput logits) or "retrieval" (lifelong.models.retrieval)
    n_items: int = 0
    n_cates: int = 0
    n_behaviors: int = 0
    embedding_dim: int = 32

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when a value is out of range."""
        for name in ("n_items", "n_cates"):
            if getattr(self, name) < 2:
                raise ValueError(f"{self.model_type}: {name} must be at least 2 (padding and unknown), got {getattr(self, name)}")
        if self.embedding_dim < 1:
            raise ValueError(f"{self.model_type}: embedding_dim must be positive, got {self.embedding_dim}")

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **dataclasses.asdict(self)}

    def batch_needs(self) -> dict[str, bool]:
        """Optional batch fields this model reads, as :class:`lifelong.batch.Collator` options:
        ``with_timestamps`` (history and sample times) and ``with_negatives`` (one sampled non-clicked
        item per history event, for auxiliary losses). The loop builds its collators from this."""
        return {}


MODELS: dict[str, tuple[type[ModelConfig], type[nn.Module]]] = {}


def register(config_class: type[ModelConfig]):
    """Class decorator: ``@register(DINConfig) class DIN(nn.Module)``."""

    def wrap(model_class: type[nn.Module]) -> type[nn.Module]:
        name = config_class.model_type
        if not name:
            raise ValueError(f"{config_class.__name__} has no model_type")
        if name in MODELS:
            raise ValueError(f"model_type {name!r} is registered twice")
        MODELS[name] = (config_class, model_class)
        return model_class

    return wrap


def _fits(value: Any, hint: Any) -> bool:
    """Whether a config value has its field's declared type (an int is a float; a bool is not a number)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        item = args[0] if args else Any
        return all(_fits(v, item) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # a type the check does not know: the config's own validate() decides


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "null"}.get(hint, str(hint))


def config_from_dict(values: dict[str, Any]) -> ModelConfig:
    """Build and validate a config from a dict with a ``model_type`` key; unknown keys are errors."""
    values = dict(values)
    name = values.pop("model_type", None)
    if name not in MODELS:
        raise ValueError(f"unknown model_type {name!r}; registered: {sorted(MODELS)}")
    config_class = MODELS[name][0]
    known = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{name}: unknown config field(s) {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(config_class)
    for key, value in list(values.items()):  # TOML/YAML give lists where a tuple field is declared
        if isinstance(value, list):
            values[key] = value = tuple(value) if isinstance(known[key].default, tuple) else value
        if not _fits(value, hints.get(key, Any)):
            raise ValueError(f"{name}: {key} must be {_describe(hints[key])}, got {value!r}")
    config = config_class(**values)
    config.validate()
    return config


def build_model(config: ModelConfig | dict[str, Any]) -> nn.Module:
    """Instantiate the registered model for a config (or a config dict)."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    config.validate()
    return MODELS[config.model_type][1](config)
