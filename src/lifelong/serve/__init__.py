"""Serving: ``lifelong export`` (a self-describing artifact folder) and ``lifelong serve`` (an HTTP service).

- :mod:`lifelong.serve.artifact`: write and verify an artifact (weights, config, vocabularies, item table,
  item vectors and faiss indexes, a manifest of checksums); loading never unpickles.
- :mod:`lifelong.serve.scorer`: :class:`~lifelong.serve.scorer.Scorer`, ranking and retrieval on raw ids from
  a run folder or an artifact, without FastAPI.
- :mod:`lifelong.serve.store`: the behavior store (SQLite WAL by default, Redis).
- :mod:`lifelong.serve.app`: the FastAPI application (micro-batching, user-state cache, metrics).

This package imports nothing heavy on its own: each module is imported where it is used.
"""
