"""lifelong: user-interest modeling for recommender systems.

Behavior sequences in, interest representations out: ranking (CTR) and retrieval models trained and
evaluated under exact, published protocols. See docs/design.md for the one-way flow
``data -> dataset -> protocols -> batch -> models -> train``.
"""

import os

__version__ = "0.1.0"

# Polars allocates with jemalloc, which by default keeps freed pages for ~10 s before returning them to
# the OS; `prepare` frees and reallocates event-sized columns within seconds, so those retained pages
# add ~0.3 GiB to its peak resident size on a 20 M-event log. Return them at once (only when polars is
# not loaded yet and the user has not configured jemalloc; costs ~5% of `prepare`'s time).
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
