"""Prometheus metrics: counts, sizes and latencies, never identifiers.

One registry for the node; the HTTP endpoint binds to loopback unless
configured otherwise. Labels carry reasons and stage names only: no patient,
study or instance identifiers ever become label values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets from 10 ms to 10 minutes: a store takes milliseconds,
# a delivery to a slow PACS can take minutes.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 600)


def _registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


@dataclass
class NodeMetrics:
    registry: CollectorRegistry = field(default_factory=_registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.instances_received = Counter(
            "libra_instances_received", "Instances accepted by the listener", ["outcome"], registry=r
        )
        self.bytes_received = Counter(
            "libra_received_bytes", "Bytes of instances accepted", registry=r
        )
        self.instances_rejected = Counter(
            "libra_instances_rejected", "C-STORE requests refused, by status", ["reason"], registry=r
        )
        self.associations_rejected = Counter(
            "libra_associations_rejected", "Associations rejected by policy", ["reason"], registry=r
        )
        self.store_seconds = Histogram(
            "libra_store_seconds",
            "C-STORE handling time: parse, fsync, ledger",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.studies_completed = Counter(
            "libra_studies_completed", "Studies found complete, by outcome", ["outcome"], registry=r
        )
        self.stage_seconds = Histogram(
            "libra_stage_seconds",
            "Time per pipeline stage: receive_to_complete, complete_to_queued, prepare, "
            "queue_wait, inference, delivery, last_image_to_delivered",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "libra_retries", "Retried attempts after transient faults", ["stage"], registry=r
        )
        self.batch_size = Histogram(
            "libra_inference_batch_size", "Studies per inference batch",
            buckets=(1, 2, 4, 8, 16, 32), registry=r,
        )
        self.model_load_seconds = Gauge(
            "libra_model_load_seconds", "Time the gpu worker took to load the model",
            multiprocess_mode="max", registry=r,
        )
        self.gpu_memory_bytes = Gauge(
            "libra_gpu_memory_bytes", "Peak GPU memory allocated by the model",
            multiprocess_mode="livemax", registry=r,
        )


METRICS = NodeMetrics()
