"""lifelong: user-interest modeling for recommender systems.

Behavior sequences in, interest representations out: ranking (CTR) and retrieval models trained and
evaluated under exact, published protocols. See docs/design.md for the one-way flow
``data -> dataset -> protocols -> batch -> models -> train``, and docs/python.md for the Python API:

>>> import lifelong
>>> data = lifelong.prepare("csv", "log.csv", "data", columns={...})   # doctest: +SKIP
>>> lifelong.train(data, "din", "runs/din", epochs=2)                  # doctest: +SKIP
>>> lifelong.evaluate("runs/din")                                      # doctest: +SKIP
>>> lifelong.load("runs/din").rank(["i1", "i2"], ["i3", "i4"])         # doctest: +SKIP

The API functions load lazily: ``import lifelong`` imports neither torch nor polars.
"""

import os

__version__ = "0.1.0"

# Polars allocates with jemalloc, which by default keeps freed pages for ~10 s before returning them to
# the OS; `prepare` frees and reallocates event-sized columns within seconds, so those retained pages
# add ~0.3 GiB to its peak resident size on a 20 M-event log. Return them at once (only when polars is
# not loaded yet and the user has not configured jemalloc; costs ~5% of `prepare`'s time).
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")

API = ("prepare", "train", "evaluate", "load", "available_models")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    """``lifelong.prepare`` etc.: :mod:`lifelong.api`'s functions, imported on first use."""
    if name in API:
        from lifelong import api

        return getattr(api, name)
    raise AttributeError(f"module 'lifelong' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *API})
