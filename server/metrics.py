"""Prometheus metrics. With ``WORKERS>1`` the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` before any
worker starts, and ``/metrics`` aggregates every worker's files (prometheus_client's multiprocess
mode). No label is built from user input: routes are templates, statuses a fixed set.
"""

from __future__ import annotations

import gc
import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SLOW = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

GENERATIONS_STARTED = Counter("orderly_generations_started", "Generations started")
GENERATIONS_QUEUED = Counter(
    "orderly_generations_queued", "Generations queued behind running answers (on_running enqueue)"
)
QUEUE_CLAIMS = Counter("orderly_queue_claims", "Queued answers this worker started")
QUEUE_WAIT_SECONDS = Histogram(
    "orderly_queue_wait_seconds", "Queued to started, for queued answers", buckets=_SLOW
)
GENERATIONS_FINISHED = Counter(
    "orderly_generations_finished", "Generations finished by this worker", ["status"]
)
GENERATIONS_RUNNING = Gauge(
    "orderly_generations_running", "Generations running", multiprocess_mode="livesum"
)
OPEN_STREAMS = Gauge("orderly_open_streams", "Open SSE streams", multiprocess_mode="livesum")
FIRST_EVENT_SECONDS = Histogram(
    "orderly_time_to_first_event_seconds", "Request to the first event sent", buckets=_FAST
)
GENERATION_SECONDS = Histogram(
    "orderly_generation_duration_seconds", "Reservation to terminal state written", buckets=_SLOW
)
EVENTS_FLUSHED = Counter("orderly_events_flushed", "Events written by the flusher")
FLUSH_SECONDS = Histogram("orderly_flush_seconds", "Duration of one batched flush", buckets=_FAST)
FLUSH_BATCH = Histogram(
    "orderly_flush_batch_messages",
    "Messages written per flush",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
EVENT_LOOP_LAG_SECONDS = Histogram(
    "orderly_event_loop_lag_seconds",
    "How late a timer fires on the event loop (sampled about once a second per worker)",
    buckets=_FAST,
)
GC_PAUSE_SECONDS = Histogram(
    "orderly_gc_pause_seconds",
    "Garbage collections of a worker (every generation), each pausing its event loop",
    ["generation"],
    buckets=_FAST,
)
FLUSH_FAILURES = Counter("orderly_flush_failures", "Flush statements that failed")
LEASES_REAPED = Counter("orderly_leases_reaped", "Messages closed by the reaper")
HEARTBEAT_SECONDS = Histogram(
    "orderly_heartbeat_seconds", "Duration of one heartbeat renewal", buckets=_FAST
)
HEARTBEAT_FAILURES = Counter(
    "orderly_heartbeat_failures", "Heartbeat renewals that failed (database unavailable)"
)
HEARTBEAT_EXPIRED = Counter(
    "orderly_heartbeat_expired", "Heartbeats found expired at renewal (their answers given up)"
)
EVENTS_PRUNED = Counter("orderly_events_pruned", "Stored events deleted by retention")
TOKENS = Counter(
    "orderly_tokens",
    "Tokens of the successful answers this worker wrote, as their generator reported them",
    ["kind"],
)
for _kind in ("prompt", "completion"):  # the only labels: shown from the start, at 0
    TOKENS.labels(_kind)
CANCELS = Counter("orderly_cancels", "Generations cancelled through the API")
POOL_IN_USE = Gauge(
    "orderly_db_pool_in_use", "Pool connections in use", multiprocess_mode="livesum"
)
POOL_SIZE = Gauge("orderly_db_pool_size", "Pool connections open", multiprocess_mode="livesum")
POOL_WAITING = Gauge(
    "orderly_db_pool_waiting", "Queries waiting for a connection", multiprocess_mode="livesum"
)
HTTP_REQUESTS = Counter(
    "orderly_http_requests", "HTTP requests by route template and status", ["route", "status"]
)
HTTP_SECONDS = Histogram(
    "orderly_http_request_seconds",
    "HTTP request duration (streams: until the stream ends)",
    ["route"],
    buckets=_FAST,
)


def watch_garbage_collections() -> None:
    """Time every garbage collection of this process (``GC_PAUSE_SECONDS``): a full collection
    walks every live object, and its pause holds every stream of the worker."""
    started = [0.0]

    def on_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            elapsed = time.perf_counter() - started[0]
            GC_PAUSE_SECONDS.labels(str(info["generation"])).observe(elapsed)

    gc.callbacks.append(on_collection)


def exposition() -> tuple[bytes, str]:
    """The text format of every metric, summed over workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
