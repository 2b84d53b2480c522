"""One seeded random stream per random component, so turning one option on does not shift another's draws.

With a single global generator, every draw moves the generator for all later draws: switching on sampled
negatives would change which steps IDNP takes as context, or which items ICLRec masks, in every later
batch. Here each component draws from its own named stream (``"negatives"``, ``"context_split"``,
``"latent_noise"``, ``"augment"``, ``"diffusion"``, ...), seeded from ``(seed, epoch, name)``: the
training loops call :meth:`RandomStreams.reset` at the start of every epoch (so a resumed run draws
exactly what an uninterrupted one does), and a component asks for its generator on the device of its
tensors. Dropout stays on torch's global generator (``nn.Dropout`` takes none), which the loops seed
per epoch as well; no named stream touches it.

Example:
    >>> STREAMS.reset(seed=7, epoch=1)
    >>> a = torch.rand(3, generator=STREAMS("negatives"))
    >>> _ = torch.rand(5, generator=STREAMS("context_split"))  # another component draws in between
    >>> STREAMS.reset(seed=7, epoch=1)
    >>> torch.equal(a, torch.rand(3, generator=STREAMS("negatives")))
    True
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


class RandomStreams:
    """Named ``torch.Generator`` streams, reseeded together by :meth:`reset`."""

    def __init__(self, seed: int = 0, epoch: int = 0) -> None:
        self.reset(seed, epoch)

    def reset(self, seed: int, epoch: int = 0) -> None:
        """Start every stream afresh for ``(seed, epoch)``."""
        self.seed, self.epoch = int(seed), int(epoch)
        self._generators: dict[tuple[str, str], torch.Generator] = {}

    def __call__(self, name: str, device: torch.device | str = "cpu") -> torch.Generator:
        """The generator of stream ``name`` on ``device`` (created on first use after a reset)."""
        device = torch.device(device)
        key = (name, str(device))
        if key not in self._generators:
            state = np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.epoch, zlib.crc32(name.encode())])
            generator = torch.Generator(device=device)
            generator.manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> 1))
            self._generators[key] = generator
        return self._generators[key]


STREAMS = RandomStreams()  # the process's streams; the training loops reset them every epoch
