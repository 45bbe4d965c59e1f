"""Prometheus metrics: requests, errors, queue depth, time to first audio, real-time factor, GPU memory."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]


class Metrics:
    """One registry per app, so several servers (or tests) in one process do not collide."""

    def __init__(self, pool=None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "utter_tts_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.errors = Counter("utter_tts_errors", "Error responses by error.code", ["code"], registry=r)
        self.queue_depth = Gauge("utter_tts_queue_depth", "Generations waiting for a slot", registry=r)
        self.active = Gauge("utter_tts_active_generations", "Generations running now", registry=r)
        self.ttfa = Histogram(
            "utter_tts_time_to_first_audio_seconds",
            "From request arrival to the first audio chunk",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30),
            registry=r,
        )
        self.rtf = Histogram(
            "utter_tts_real_time_factor",
            "Generation time divided by audio duration (below 1 is faster than real time)",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 4, 8, 16),
            registry=r,
        )
        self.audio_seconds = Counter("utter_tts_audio_seconds", "Seconds of audio generated", registry=r)
        self.gpu_memory = Gauge(
            "utter_tts_gpu_memory_bytes", "GPU memory allocated by torch", ["device"], registry=r
        )
        self.pool = pool

    def render(self) -> bytes:
        if self.pool is not None:
            self.queue_depth.set(self.pool.waiting)
            self.active.set(self.pool.active)
        try:
            import torch

            if torch.cuda.is_available():
                for i in range(torch.cuda.device_count()):
                    self.gpu_memory.labels(device=f"cuda:{i}").set(torch.cuda.memory_allocated(i))
        except Exception:  # metrics must never fail the scrape
            pass
        return generate_latest(self.registry)
