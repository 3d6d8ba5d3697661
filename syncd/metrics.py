"""Prometheus metrics, served on ``metrics.listen`` from a private registry.

Counters are fed by the uploader's events (items, bytes, latency, failures by code) and
by the disk guard. Queue gauges come from a snapshot that the daemon's periodic task
takes of the outbox counts: the HTTP server runs on its own thread and never touches
the outbox, which belongs to the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from syncd.config import split_address
from syncd.outbox import OutboxCounts

# Upload latency buckets, seconds: a reading batch on a LAN to a big file on a bad link.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


@dataclass(frozen=True)
class Snapshot:
    """The latest state the daemon saw, for scrapes; replaced whole, never mutated."""

    counts: OutboxCounts
    retries: int = 0
    paused: bool = False
    connected: bool = True


class Metrics:
    """The daemon's metrics. Pass it as the uploader's ``events``; call :meth:`update`
    from the periodic task, :meth:`thinned` after the disk guard deleted files."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._items = Counter(
            "syncd_uploaded_items", "Items acknowledged by the server", ["kind"], registry=r
        )
        self._bytes = Counter(
            "syncd_uploaded_bytes", "Bytes acknowledged by the server", ["kind"], registry=r
        )
        self._failures = Counter(
            "syncd_upload_failures",
            "Failed upload attempts, by gRPC status or error class",
            ["code"],
            registry=r,
        )
        self._latency = Histogram(
            "syncd_upload_seconds",
            "Time from starting an upload to the server's acknowledgement",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._thinned_files = Counter(
            "syncd_disk_guard_deleted_files", "Capture files deleted by the disk guard", registry=r
        )
        self._thinned_bytes = Counter(
            "syncd_disk_guard_deleted_bytes", "Bytes freed by the disk guard", registry=r
        )
        self.snapshot = Snapshot(OutboxCounts.zero())
        r.register(_SnapshotCollector(self))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # --- fed by the uploader (UploadEvents) and the daemon -----------------------------

    def uploaded(self, kind: str, items: int, nbytes: int, seconds: float) -> None:
        self._items.labels(kind).inc(items)
        self._bytes.labels(kind).inc(nbytes)
        self._latency.labels(kind).observe(seconds)

    def failed(self, code: str) -> None:
        self._failures.labels(code).inc()

    def thinned(self, files: int, nbytes: int) -> None:
        self._thinned_files.inc(files)
        self._thinned_bytes.inc(nbytes)

    def update(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    # --- serving ------------------------------------------------------------------------

    def serve(self, listen: str) -> tuple[str, int]:
        """Serve ``/metrics`` on ``host:port`` (port 0 picks one) on a thread; returns
        the address bound. Raises OSError when the address is taken."""
        host, port = split_address(listen)
        self._server, self._thread = start_http_server(port, host, registry=self.registry)
        return host, self._server.server_port

    def close(self) -> None:
        """Stop serving (blocking: waits for the server thread)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class _SnapshotCollector(Collector):
    """Queue gauges at scrape time from the daemon's latest snapshot."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snap = self._metrics.snapshot
        c = snap.counts
        items = GaugeMetricFamily("syncd_queue_items", "Outbox rows by state", labels=["state"])
        size = GaugeMetricFamily("syncd_queue_bytes", "Outbox bytes by state", labels=["state"])
        for state, n, nbytes in (
            ("pending", c.pending, c.pending_bytes),
            ("inflight", c.inflight, c.inflight_bytes),
            ("failed", c.failed, c.failed_bytes),
        ):
            items.add_metric([state], n)
            size.add_metric([state], nbytes)
        yield items
        yield size
        yield GaugeMetricFamily(
            "syncd_oldest_pending_age_seconds",
            "Age of the oldest item not yet delivered (0 when none)",
            value=c.oldest_pending_age_s or 0.0,
        )
        yield CounterMetricFamily(
            "syncd_upload_retries", "Uploads scheduled for a retry", value=snap.retries
        )
        yield GaugeMetricFamily(
            "syncd_paused",
            "1 while uploads are paused or outside the sync windows",
            value=int(snap.paused),
        )
        yield GaugeMetricFamily(
            "syncd_connected", "0 while the server is unreachable", value=int(snap.connected)
        )
