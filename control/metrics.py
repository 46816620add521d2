"""Prometheus metrics of one control server (its own registry: no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class ControlMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("eucalypt_control_requests", "EC2 API requests by action and HTTP status",
                                ["action", "status"], registry=self.registry)
        self.duration = Histogram("eucalypt_control_request_duration_seconds", "Time to answer an EC2 request",
                                  ["action"], registry=self.registry,
                                  buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.errors = Counter("eucalypt_control_errors", "EC2 error responses by code", ["code"],
                              registry=self.registry)
        self.user_lookups = Counter("eucalypt_control_user_lookups", "Internal user lookups by result",
                                    ["result"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
