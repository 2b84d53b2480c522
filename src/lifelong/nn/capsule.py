"""Capsule dynamic routing (Sabour et al., 2017) from behavior capsules to interest capsules, in the
variants of MIND (B2I routing: one shared map, random initial logits, switched-off interests) and
ComiRec-DR (per-(position, interest) maps, zero initial logits, stop-gradient before the last round)."""

from __future__ import annotations

import torch


def squash(z: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """The capsule non-linearity over the last dim (MIND, ComiRec-DR): ``|z|^2 / (1 + |z|^2) * z / |z|``
    (0 at z = 0).

    Example:
        >>> round(float(squash(torch.tensor([3.0, 4.0])).norm()), 4)  # 25 / 26
        0.9615
    """
    n2 = (z * z).sum(dim=-1, keepdim=True)
    return z * (n2 / (1.0 + n2) / torch.sqrt(n2 + eps))


def dynamic_routing(predictions: torch.Tensor, mask: torch.Tensor, iterations: int,
                    initial_logits: torch.Tensor | None = None, valid: torch.Tensor | None = None,
                    stop_gradient_early: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing by agreement: each round, the couplings ``c_jk = softmax_k(b_jk)`` (over the valid
    interests, per real behavior; zero at padding), the capsules ``v_k = squash(sum_j c_jk u_jk)`` and,
    except after the last round, ``b_jk += <u_jk, v_k>``.

    Args:
        predictions: behavior ``j``'s prediction for interest ``k``: (B, T, K, D) ``u_jk`` (ComiRec-DR's
            per-pair maps), or (B, T, D) ``u_j``, the same for every interest (MIND's shared map ``S e_j``).
        mask: (B, T) bool, True at real behaviors.
        iterations: routing rounds (at least 1).
        initial_logits: (B, T, K) ``b_jk`` of the first round (zeros when None; then K comes from
            ``predictions`` (B, T, K, D) or ``valid``).
        valid: (B, K) bool, the interests that take part (None = all); a switched-off interest gets no
            coupling and its capsule is zero.
        stop_gradient_early: every round but the last routes with ``stop_gradient(u)`` (CapsNet and
            ComiRec's code), so the couplings carry no gradient.

    Returns:
        The interest capsules (B, K, D) and the couplings of every round (R, B, T, K).

    Example:
        >>> v, c = dynamic_routing(torch.randn(2, 3, 4, 8), torch.ones(2, 3, dtype=torch.bool), 3)
        >>> v.shape, c.shape
        (torch.Size([2, 4, 8]), torch.Size([3, 2, 3, 4]))
        >>> v, c = dynamic_routing(torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool), 2, torch.randn(2, 3, 4))
        >>> v.shape, c.shape  # one prediction per behavior, shared by the 4 interests
        (torch.Size([2, 4, 8]), torch.Size([2, 2, 3, 4]))
    """
    shared = predictions.dim() == 3
    b, t = mask.shape
    if initial_logits is None:
        k = valid.shape[1] if shared else predictions.shape[2]
        initial_logits = predictions.new_zeros(b, t, k)
    pool, agreement = ("btk,btd->bkd", "bkd,btd->btk") if shared else ("btk,btkd->bkd", "btkd,bkd->btk")
    logits = initial_logits  # (B, T, K) b_jk
    off = None if valid is None else ~valid.unsqueeze(1)  # (B, 1, K)
    frozen = predictions.detach() if stop_gradient_early else predictions
    real = mask.unsqueeze(-1).to(predictions.dtype)  # (B, T, 1)
    couplings = []
    for step in range(iterations):
        masked = logits if off is None else logits.masked_fill(off, float("-inf"))
        coupling = torch.softmax(masked, dim=2) * real  # (B, T, K) over the interests; padding 0
        couplings.append(coupling)
        last = step == iterations - 1
        capsules = squash(torch.einsum(pool, coupling, predictions if last else frozen))  # (B, K, D)
        if not last:
            if shared:
                logits = logits + torch.einsum(agreement, capsules, frozen)
            else:
                logits = logits + torch.einsum(agreement, frozen, capsules)
    return capsules, torch.stack(couplings)
