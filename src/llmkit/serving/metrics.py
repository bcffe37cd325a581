"""Prometheus text-format metrics, kept in memory (no client library needed)."""

from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, bound in enumerate(BUCKETS_S):
            if value <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1


class Metrics:
    """Requests by status, tokens in/out, latency histograms; gauges are read at render time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.tokens_in = 0
        self.tokens_out = 0
        self.stream_errors = 0
        self.ttft = Histogram()
        self.latency = Histogram()

    def request_done(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] += 1

    def render(self, gauges: dict[str, float]) -> str:
        """The /metrics body."""
        lines = ["# TYPE llmkit_requests_total counter"]
        with self._lock:
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'llmkit_requests_total{{route="{route}",status="{status}"}} {n}')
            lines += ["# TYPE llmkit_prompt_tokens_total counter", f"llmkit_prompt_tokens_total {self.tokens_in}",
                      "# TYPE llmkit_generation_tokens_total counter", f"llmkit_generation_tokens_total {self.tokens_out}",
                      "# TYPE llmkit_stream_errors_total counter", f"llmkit_stream_errors_total {self.stream_errors}"]
            for name, hist in (("llmkit_time_to_first_token_seconds", self.ttft),
                               ("llmkit_request_latency_seconds", self.latency)):
                lines.append(f"# TYPE {name} histogram")
                cumulative = 0
                for bound, count in zip(BUCKETS_S, hist.counts):
                    cumulative += count
                    lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
                lines.append(f'{name}_bucket{{le="+Inf"}} {hist.n}')
                lines += [f"{name}_sum {hist.total}", f"{name}_count {hist.n}"]
        for name, value in gauges.items():
            lines += [f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"
