"""Prometheus metrics of a model server, kept in plain counters (no client library in the hot path) and rendered
as the text exposition format: request count and duration histogram by model, version and status, batch size
histogram, requests in flight. Names follow Prometheus conventions (snake_case, base units)."""

from __future__ import annotations

import bisect
from collections import defaultdict

__all__ = ["Metrics", "scrape"]


def scrape(url: str, timeout: float) -> tuple[str | None, str | None]:
    """A replica's ``/metrics`` text, as (text, None), or (None, why it could not be read). Sends the replica secret
    (``ARCHIPEL_REPLICA_SECRET``) when one is set, as gateways do: replicas that require it answer 401 without."""
    import os
    import urllib.request

    secret = os.environ.get("ARCHIPEL_REPLICA_SECRET")
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(f"{url}/metrics", headers=headers), timeout=timeout
        ) as r:
            return r.read().decode("utf-8", "replace"), None
    except OSError as exc:
        return None, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"


DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def render(self, name: str, labels: str) -> list[str]:
        lines, total = [], 0
        sep = "," if labels else ""
        braces = f"{{{labels}}}" if labels else ""
        for bound, count in zip(self.buckets, self.counts, strict=False):
            total += count
            lines.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {total}')
        total += self.counts[-1]
        lines += [f'{name}_bucket{{{labels}{sep}le="+Inf"}} {total}', f"{name}_sum{braces} {self.sum:.6f}",
                  f"{name}_count{braces} {total}"]  # fmt: skip
        return lines


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.durations: dict[tuple[str, str, str], _Histogram] = {}
        self.batches = _Histogram(BATCH_BUCKETS)
        self.in_flight = 0

    def request(self, model: str, version: str, status: int, seconds: float) -> None:
        key = (model, version, str(status))
        self.requests[key] += 1
        histogram = self.durations.get(key)
        if histogram is None:
            histogram = self.durations[key] = _Histogram(DURATION_BUCKETS)
        histogram.observe(seconds)

    def batch(self, size: int) -> None:
        self.batches.observe(size)

    def render(self) -> str:
        lines = [
            "# HELP archipel_inference_requests_total Inference requests by model, version and HTTP status.",
            "# TYPE archipel_inference_requests_total counter",
        ]
        for (model, version, status), count in sorted(self.requests.items()):
            lines.append(
                f'archipel_inference_requests_total{{model="{model}",version="{version}",status="{status}"}} {count}'
            )
        lines += [
            "# HELP archipel_inference_request_duration_seconds Time from request to response.",
            "# TYPE archipel_inference_request_duration_seconds histogram",
        ]
        for (model, version, status), histogram in sorted(self.durations.items()):
            labels = f'model="{model}",version="{version}",status="{status}"'
            lines += histogram.render("archipel_inference_request_duration_seconds", labels)
        lines += ["# HELP archipel_inference_batch_size Rows per call to the model.",
                  "# TYPE archipel_inference_batch_size histogram",
                  *self.batches.render("archipel_inference_batch_size", ""),
                  "# HELP archipel_inference_in_flight Requests being served now.",
                  "# TYPE archipel_inference_in_flight gauge",
                  f"archipel_inference_in_flight {self.in_flight}"]  # fmt: skip
        return "\n".join(lines) + "\n"
