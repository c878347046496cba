"""Prometheus metrics of the generation service, for operators (EASEL_METRICS_PORT; docs/operations.md).

Counters and histograms are updated as jobs move; queue depth and worker states are read from the
service's status when Prometheus scrapes, so they are never stale. Each service has its own
registry (several services in one process — tests, benchmarks — do not collide).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common.errors import EaselError

if TYPE_CHECKING:
    from bot.generation.service import ServiceStatus

log = logging.getLogger(__name__)

# Why a job did not finish: the `reason` label of easel_job_failures_total.
FAILURE_REASONS = ("worker_error", "worker_crashed", "worker_lost", "no_capable_worker", "shutdown")


class _StatusCollector(Collector):
    def __init__(self, status: Callable[[], ServiceStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = self._status()
        jobs = GaugeMetricFamily("easel_jobs", "jobs not yet finished, by state", labels=["state"])
        jobs.add_metric(["queued"], status.queued)
        jobs.add_metric(["running"], status.running)
        yield jobs
        workers = GaugeMetricFamily(
            "easel_workers", "workers by state (idle, busy, starting, stopped)", labels=["state"]
        )
        for state in ("idle", "busy", "starting", "stopped"):
            workers.add_metric([state], sum(1 for w in status.workers if w.state == state))
        yield workers
        busy = GaugeMetricFamily(
            "easel_worker_busy", "1 while the worker runs a batch", labels=["worker", "device", "machine"]
        )
        for w in status.workers:
            busy.add_metric(
                [w.worker_id or f"local-{w.slot}", w.device, w.machine or "local"], float(w.state == "busy")
            )
        yield busy
        broker = GaugeMetricFamily("easel_broker_up", "1 while the bot reaches the broker (remote workers)")
        broker.add_metric([], float(status.broker.startswith("connected")))
        yield broker


class ServiceMetrics:
    def __init__(self, status: Callable[[], ServiceStatus]) -> None:
        self.registry = CollectorRegistry()
        self.wait_seconds = Histogram(
            "easel_job_wait_seconds",
            "from queued to started",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "easel_job_run_seconds",
            "from started to finished (done, failed or cancelled)",
            buckets=(0.5, 1, 2, 5, 10, 20, 40, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.finished = Counter("easel_jobs_finished", "jobs that ended, by state", ["state"], registry=self.registry)
        self.failures = Counter("easel_job_failures", "jobs that failed, by reason", ["reason"], registry=self.registry)
        for reason in FAILURE_REASONS:  # every series from the start, at 0, so rate() and alerts see them
            self.failures.labels(reason)
        self.images = Counter("easel_images", "pictures made", registry=self.registry)
        self.steps = Counter("easel_steps", "denoising steps run (one step of one batch)", registry=self.registry)
        self.loads = Counter(
            "easel_pipeline_loads",
            "pipelines fetched for a batch, by where from (device = a cache hit, cpu = the CPU tier, disk)",
            ["tier"],
            registry=self.registry,
        )
        self.refused = Counter("easel_broker_refused", "broker entries refused: not ours, unsigned, wrongly signed or replayed", registry=self.registry)
        self.shared_bytes = Counter(
            "easel_share_requested_bytes", "model file bytes fetching workers asked the bot's share for", registry=self.registry
        )
        self.share_refused = Counter(
            "easel_share_refused", "model share requests refused: no, a wrong or an expired token", registry=self.registry
        )
        self.registry.register(_StatusCollector(status))
        self._server: object | None = None
        self._thread: threading.Thread | None = None

    def serve(self, host: str, port: int) -> None:
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise EaselError(f"the metrics endpoint could not listen on {host}:{port} ({e.strerror or e})") from None
        log.info("metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # type: ignore[attr-defined]
            self._server.server_close()  # type: ignore[attr-defined]
            self._server = None
