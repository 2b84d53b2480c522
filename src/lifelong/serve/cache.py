"""The user-side cache: each user's encoded state (``encode_user``'s output, or a retrieval model's user
vectors), bounded and least-recently-used, keyed by the store's per-user version.

An entry is valid only for the version of the user's history it was encoded from
(:meth:`lifelong.serve.store.BehaviorStore.version` changes whenever the history does), so a state is never
served after the user's history changed, even when another process appended the events; ``POST /v1/events``
also drops the users it appended to (:meth:`UserStateCache.invalidate`), which frees the memory at once.

Example:
    >>> cache = UserStateCache(maxsize=2)
    >>> cache.put("u1", 3, "state"); cache.get("u1", 3), cache.get("u1", 4)
    ('state', None)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class UserStateCache:
    """Bounded LRU map ``user_id -> (version, value)``; thread-safe.

    Args:
        maxsize: most users kept (0 turns the cache off).

    Attributes:
        hits, misses: lookups that found a current entry / did not.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        if maxsize < 0:
            raise ValueError(f"the cache size must be non-negative, got {maxsize}")
        self.maxsize = maxsize
        self._entries: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, user_id: str, version: int) -> Any | None:
        """The value cached for ``user_id`` at ``version``, or None (a stale entry is dropped)."""
        with self._lock:
            entry = self._entries.get(user_id)
            if entry is None or entry[0] != version:
                if entry is not None:
                    del self._entries[user_id]
                self.misses += 1
                return None
            self._entries.move_to_end(user_id)
            self.hits += 1
            return entry[1]

    def put(self, user_id: str, version: int, value: Any) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            self._entries[user_id] = (version, value)
            self._entries.move_to_end(user_id)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def invalidate(self, user_id: str) -> bool:
        """Drop ``user_id``'s entry; whether there was one."""
        with self._lock:
            return self._entries.pop(user_id, None) is not None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._entries
