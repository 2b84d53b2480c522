"""Prometheus metrics of the service (prometheus-client), in a registry of their own per application."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """Requests, latency histograms, batch sizes, user-cache hits, store operations and unknown ids."""

    def __init__(self, scorer=None, cache=None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lifelong_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("lifelong_request_seconds", "request latency by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("lifelong_batch_size", "requests per forward pass (micro-batching)", ["kind"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.forward = Histogram("lifelong_forward_seconds", "time of one batched forward pass", ["kind"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.store_ops = Counter("lifelong_store_operations", "behavior store operations", ["op", "outcome"],
                                 registry=r)
        self.store_latency = Histogram("lifelong_store_seconds", "behavior store operation latency", ["op"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.cache_size = Gauge("lifelong_user_cache_entries", "users in the user-state cache", registry=r)
        self.rejected = Counter("lifelong_rejected_requests", "requests refused at the boundary (4xx)", ["endpoint"],
                                registry=r)
        self._scorer, self._cache = scorer, cache
        r.register(_Live(self))


class _Live:
    """Counters read at scrape time from the scorer (unknown ids) and the cache (hits, misses)."""

    def __init__(self, metrics: ServeMetrics) -> None:
        self.metrics = metrics

    def collect(self):
        scorer, cache = self.metrics._scorer, self.metrics._cache
        unknown = CounterMetricFamily("lifelong_unknown_ids", "raw ids not in the vocabularies, mapped to the "
                                      "unknown index", labels=["field"])
        for field in ("item", "behavior", "user"):
            unknown.add_metric([field], float(scorer.unknown.get(field, 0)) if scorer is not None else 0.0)
        yield unknown
        lookups = CounterMetricFamily("lifelong_user_cache_lookups", "user-state cache lookups", labels=["result"])
        lookups.add_metric(["hit"], float(cache.hits) if cache is not None else 0.0)
        lookups.add_metric(["miss"], float(cache.misses) if cache is not None else 0.0)
        yield lookups
        if cache is not None:
            self.metrics.cache_size.set(len(cache))
