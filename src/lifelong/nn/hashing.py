"""Random-projection hashing (SimHash) for the long-history models: ETA's Hamming search, SDIM's
hash-collision sampling.

A vector ``x`` is hashed with ``m`` fixed Gaussian directions ``R`` (sampled once from a seed, never
trained): bit ``j`` is ``1[r_j . x >= 0]``. Two vectors at angle ``theta`` agree on a bit with
probability ``1 - theta / pi``, so

- the Hamming distance of two ``m``-bit signatures estimates their angle (ETA);
- grouped into signatures of ``tau`` consecutive bits, two vectors *collide* on a signature (all ``tau``
  bits equal) with probability ``(1 - theta / pi) ** tau`` (SDIM's sampling weight,
  :func:`collision_probability`).

Two ways to compute a Hamming distance sit behind one switch (:func:`hamming_distance`): ``popcount`` on
bits packed into int64 words (the reference; torch has no popcount instruction, so a SWAR bit count),
and ``matmul`` on +-1 signs, ``(m - <s_q, s_h>) / 2``, a matrix product (fast, exact: integers). They
are tested equal.
"""

from __future__ import annotations

import math

import torch

MASK_1 = 0x5555555555555555
MASK_2 = 0x3333333333333333
MASK_4 = 0x0F0F0F0F0F0F0F0F


def random_projections(n_bits: int, dim: int, seed: int) -> torch.Tensor:
    """``n_bits`` fixed Gaussian directions, drawn from their own generator (torch's global one is untouched).

    Args:
        n_bits: number of hash bits ``m``.
        dim: width of the hashed vectors.
        seed: the generator's seed (a config field, so a checkpoint rebuilds the same hashes).

    Returns:
        (m, dim) float32.

    Example:
        >>> random_projections(8, 4, seed=0).shape
        torch.Size([8, 4])
    """
    return torch.randn(n_bits, dim, generator=torch.Generator().manual_seed(seed))


def hash_bits(x: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """SimHash bits ``1[R x >= 0]``.

    Args:
        x: (..., D) vectors.
        projections: (m, D) directions.

    Returns:
        (..., m) bool.

    Example:
        >>> hash_bits(torch.tensor([[1.0, -2.0]]), torch.eye(2))
        tensor([[ True, False]])
    """
    return (x @ projections.T.to(x.dtype)) >= 0


def signature_codes(bits: torch.Tensor, bits_per_signature: int) -> torch.Tensor:
    """Group every ``tau`` consecutive bits into one signature code (SDIM): bit ``j`` of a group weighs ``2**j``.

    Args:
        bits: (..., m) bool, ``m`` a multiple of ``tau``.
        bits_per_signature: ``tau``.

    Returns:
        (..., m / tau) int64 codes in ``[0, 2**tau)``.

    Example:
        >>> signature_codes(torch.tensor([True, False, True, True]), 2)
        tensor([1, 3])
    """
    m = bits.shape[-1]
    if m % bits_per_signature:
        raise ValueError(f"{m} hash bits do not split into signatures of {bits_per_signature} bits")
    bit = torch.arange(m, device=bits.device)
    weights = torch.zeros(m, m // bits_per_signature, device=bits.device)  # (m, m / tau): bit j -> its group
    weights[bit, bit // bits_per_signature] = 2.0 ** (bit % bits_per_signature)
    return (bits.to(weights.dtype) @ weights).long()  # one product; exact (codes below 2**24)


def collision_probability(cosine: torch.Tensor | float, bits_per_signature: int) -> torch.Tensor:
    """SDIM's expected weight of a behavior: ``(1 - arccos(cos) / pi) ** tau``."""
    cosine = torch.as_tensor(cosine, dtype=torch.float64).clamp(-1.0, 1.0)
    return (1 - torch.arccos(cosine) / math.pi) ** bits_per_signature


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack bits into int64 words (bit ``j`` of word ``w`` is bit ``64 w + j``).

    Args:
        bits: (..., m) bool.

    Returns:
        (..., ceil(m / 64)) int64.

    Example:
        >>> pack_bits(torch.tensor([True, False, True]))
        tensor([5])
    """
    m = bits.shape[-1]
    words = -(-m // 64)
    padded = torch.nn.functional.pad(bits.long(), (0, words * 64 - m)).view(*bits.shape[:-1], words, 64)
    shifts = torch.arange(64, device=bits.device)
    return (padded << shifts).sum(dim=-1)  # disjoint bits: the sum is the bitwise or (wraps into the sign bit)


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Number of set bits of each int64 (SWAR: pairs, nibbles, bytes, then a byte sum)."""
    x = words - ((words >> 1) & MASK_1)  # arithmetic shift: the sign bits it drags in are masked off
    x = (x & MASK_2) + ((x >> 2) & MASK_2)
    x = (x + (x >> 4)) & MASK_4
    return sum((x >> (8 * i)) & 0xFF for i in range(8))


def hamming_distance(query: torch.Tensor, history: torch.Tensor, impl: str = "matmul") -> torch.Tensor:
    """Hamming distances of every query signature to every history signature, per user.

    Args:
        query: (B, K, m) bool.
        history: (B, T, m) bool.
        impl: ``matmul`` (``(m - <s_q, s_h>) / 2`` on +-1 signs, a batched matrix product) or
            ``popcount`` (xor and bit count of packed int64 words, the reference).

    Returns:
        (B, K, T) int64.

    Example:
        >>> q, h = torch.tensor([[[True, True, False]]]), torch.tensor([[[True, False, True], [True, True, False]]])
        >>> hamming_distance(q, h).tolist(), hamming_distance(q, h, impl="popcount").tolist()
        ([[[2, 0]]], [[[2, 0]]])
    """
    if impl == "popcount":
        return packed_hamming(pack_bits(query), pack_bits(history))
    if impl != "matmul":
        raise ValueError(f"impl must be 'matmul' or 'popcount', got {impl!r}")
    m = query.shape[-1]
    dots = torch.bmm(signs(query), signs(history).transpose(1, 2))  # (B, K, T) integers in [-m, m]
    return ((m - dots) / 2).round().long()


def packed_hamming(query: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """Hamming distances of packed signatures: (B, K, W) and (B, T, W) int64 words -> (B, K, T) int64."""
    return popcount(query.unsqueeze(2) ^ history.unsqueeze(1)).sum(dim=-1)


def signs(bits: torch.Tensor) -> torch.Tensor:
    """Bits as +-1 float32: (..., m) bool -> (..., m)."""
    return bits.float() * 2 - 1
