"""Where a run computes (``--device``) and in which precision its training forward pass runs (``--precision``).

``auto`` is the first CUDA device when torch sees one, else the CPU. Batches are built on the CPU from
the columnar dataset and moved to the device by the :class:`~lifelong.batch.Collator`; metrics are
computed on the host from ``.cpu()`` copies of the predictions.

Precision: ``fp32`` everywhere by default. ``bf16`` runs the *training* forward pass under
``torch.autocast`` (matrix products and attention in bfloat16, reductions and the loss in float32;
weights and optimizer state stay float32). Evaluation and ranking always run in float32, so a reported
metric does not depend on the precision of a comparison (ties and near-ties in a full-catalogue ranking
would). DESMIL's sample weighting runs its forward passes under the same autocast but learns its weights
in float32, on the interests cast to float32 (its random-Fourier-feature HSIC is a small difference of
large sums, not safe in bfloat16).
"""

from __future__ import annotations

import contextlib

import torch

from lifelong.errors import UserError

PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a device torch can use; a CUDA request on a machine
    without CUDA (or a GPU index it does not have) is a :class:`UserError` saying so."""
    name = "auto" if name is None else str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UserError(f"--device {name!r}: lifelong runs on cpu or cuda (auto picks); got a {device.type} device")
    if not torch.cuda.is_available():
        build = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device is visible"
        raise UserError(f"--device {name}: CUDA is not available here ({build}); use --device cpu or auto")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"numbered from 0")
    return device


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def training_autocast(precision: str, device: torch.device):
    """The context of a training forward pass: bfloat16 autocast for ``bf16``, nothing for ``fp32``."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
