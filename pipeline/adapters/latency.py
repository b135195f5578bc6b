"""Latency profiles for the simulated services, taken from the old system's timings.

REFERENCE.md measured: Textract 3-40 s per document (one took 163 s), the
document node 10-20 s (mostly database round trips), one LLM call per chunk
at ~1-4 s, graph writes 2-5 s. The `reference` profile reproduces those; the
`none` profile (the default) adds nothing, so tests and demos stay instant.

`time_scale` multiplies every sampled wait (0.1 makes a 15 s document-node
write take 1.5 s), so a load run takes tens of seconds instead of hours.

Sampling is a pure function of (seed, service, key): the same key always
waits the same time, in every process, which makes runs reproducible and the
sequential and Celery runs comparable. Waits are taken by the fakes through
the `Clock` port, so they are real I/O waits in broker mode (thread and
gevent pools overlap them) and can become virtual time in a simulation.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal

from pipeline.domain.models import DocumentNode, Fence
from pipeline.ports import Clock, DocumentStore

if TYPE_CHECKING:
    from pipeline.settings import Settings

#: Simulated-time settings the load run scales with the profile (seconds in the old system).
SCALED_SETTINGS = ("ocr_poll_interval_s", "llm_rate_limit_window_s", "retry_backoff_base_s")

#: The simulated services a profile sets a wait for.
OCR_JOB = "ocr_job"
LLM_CALL = "llm_call"
DOCUMENT_DB = "document_db"
GRAPH_WRITE = "graph_write"
SERVICES: tuple[str, ...] = (OCR_JOB, LLM_CALL, DOCUMENT_DB, GRAPH_WRITE)

DistributionKind = Literal["fixed", "uniform", "lognormal"]
_STANDARD_NORMAL = NormalDist()
#: Quantile points used to compute the mean of a bounded distribution numerically.
_MEAN_POINTS = 4000


@dataclass(frozen=True)
class Distribution:
    """A wait in (unscaled) seconds.

    fixed: always `a`. uniform: between `a` and `b`. lognormal: median `a`,
    shape `b` (sigma of the underlying normal). Every kind is clipped to
    [`low`, `high`].
    """

    kind: DistributionKind
    a: float = 0.0
    b: float = 0.0
    low: float = 0.0
    high: float = math.inf

    def __post_init__(self) -> None:
        if self.a < 0 or self.b < 0 or self.low < 0:
            raise ValueError(f"latency distribution {self.describe()}: negative parameter")
        if self.kind == "uniform" and self.b < self.a:
            raise ValueError(f"latency distribution {self.describe()}: high below low")
        if self.high < self.low:
            raise ValueError(f"latency distribution {self.describe()}: bounds reversed")

    def quantile(self, u: float) -> float:
        """The value at cumulative probability `u` (0 <= u < 1), clipped to the bounds."""
        if self.kind == "fixed":
            value = self.a
        elif self.kind == "uniform":
            value = self.a + (self.b - self.a) * u
        else:
            u = min(max(u, 1e-12), 1 - 1e-12)
            value = self.a * math.exp(self.b * _STANDARD_NORMAL.inv_cdf(u))
        return min(max(value, self.low), self.high)

    def mean(self) -> float:
        """The mean wait in unscaled seconds (numerical for the clipped lognormal)."""
        if self.kind == "fixed":
            return self.quantile(0.0)
        if self.kind == "uniform" and self.low <= self.a and self.b <= self.high:
            return (self.a + self.b) / 2
        points = [(i + 0.5) / _MEAN_POINTS for i in range(_MEAN_POINTS)]
        return sum(self.quantile(u) for u in points) / _MEAN_POINTS

    def describe(self) -> str:
        params = f"{self.a:g}" if self.kind == "fixed" else f"{self.a:g}:{self.b:g}"
        bounds = "" if (self.low, self.high) == (0.0, math.inf) else f":{self.low:g}:{self.high:g}"
        return f"{self.kind}:{params}{bounds}"


ZERO = Distribution("fixed", 0.0)

#: Share of one LLM call's time that does not grow with the tokens it carries (the round
#: trip and time to first token, ~0.3-0.5 s of a 1-4 s call); the rest is generating
#: the answer, token by token, so it grows with the chunks a packed call carries.
LLM_FIXED_SHARE = 0.25


def pack_call_seconds(
    call_seconds: Callable[[str], float], pack_key: str, chunk_keys: Sequence[str]
) -> float:
    """Simulated time of one LLM request carrying these chunks (keys: sha256 of each text).

    `LLM_CALL` is the time of a request carrying one chunk. A packed request
    pays the fixed part once and each chunk's token part: fixed share x the
    pack's own sample + the rest of each chunk's sample. One chunk costs exactly
    its old sample, so unpacked runs keep their timings.
    """
    if len(chunk_keys) == 1:
        return call_seconds(chunk_keys[0])
    variable = sum(call_seconds(key) for key in chunk_keys)
    return LLM_FIXED_SHARE * call_seconds(pack_key) + (1 - LLM_FIXED_SHARE) * variable


def pack_key(chunk_keys: Sequence[str]) -> str:
    """The latency key of a packed request: a digest of its chunks' keys."""
    return hashlib.sha256("\x00".join(chunk_keys).encode()).hexdigest()


def parse_distribution(spec: str) -> Distribution:
    """`fixed:S`, `uniform:LOW:HIGH`, `lognormal:MEDIAN:SIGMA[:LOW:HIGH]` (seconds)."""
    kind, *raw = spec.strip().split(":")
    try:
        numbers = [float(x) for x in raw]
    except ValueError:
        raise ValueError(f"latency {spec!r}: parameters must be numbers") from None
    if kind == "fixed" and len(numbers) == 1:
        return Distribution("fixed", numbers[0])
    if kind == "uniform" and len(numbers) == 2:
        return Distribution("uniform", numbers[0], numbers[1])
    if kind == "lognormal" and len(numbers) in (2, 4):
        low, high = numbers[2:] if len(numbers) == 4 else (0.0, math.inf)
        return Distribution("lognormal", numbers[0], numbers[1], low, high)
    raise ValueError(
        f"latency {spec!r}: use fixed:S, uniform:LOW:HIGH or lognormal:MEDIAN:SIGMA[:LOW:HIGH]"
    )


#: The old system's measured timings (REFERENCE.md), in seconds.
REFERENCE: Mapping[str, Distribution] = {
    # 3-40 s with a long tail (one 2-page PDF took 163 s): median 12 s, p99 ~48 s.
    OCR_JOB: Distribution("lognormal", 12.0, 0.6, 3.0, 163.0),
    LLM_CALL: Distribution("uniform", 1.0, 4.0),
    DOCUMENT_DB: Distribution("uniform", 10.0, 20.0),
    GRAPH_WRITE: Distribution("uniform", 2.0, 5.0),
}
PROFILES: Mapping[str, Mapping[str, Distribution]] = {
    "none": {service: ZERO for service in SERVICES},
    "reference": REFERENCE,
}


@dataclass(frozen=True)
class LatencyProfile:
    """Per-service waits, a time scale and a seed: `sample(service, key)` in wall seconds."""

    name: str = "none"
    services: Mapping[str, Distribution] = field(default_factory=lambda: dict(PROFILES["none"]))
    time_scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        unknown = set(self.services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown latency service(s) {sorted(unknown)}; use {SERVICES}")

    def distribution(self, service: str) -> Distribution:
        return self.services.get(service, ZERO)

    def is_zero(self, service: str) -> bool:
        return self.distribution(service).mean() == 0.0

    @property
    def enabled(self) -> bool:
        return not all(self.is_zero(service) for service in SERVICES)

    def sample(self, service: str, key: str) -> float:
        """Wall seconds to wait for this service call; the same key gives the same wait."""
        distribution = self.distribution(service)
        if distribution == ZERO:
            return 0.0
        digest = hashlib.blake2b(
            f"{self.seed}\x00{service}\x00{key}".encode(), digest_size=8
        ).digest()
        u = int.from_bytes(digest, "big") / 2.0**64
        return distribution.quantile(u) * self.time_scale

    def mean(self, service: str) -> float:
        """The mean wall seconds of one call (scaled)."""
        return self.distribution(service).mean() * self.time_scale

    def sampler(self, service: str) -> Callable[[str], float] | None:
        """`key -> seconds` for a fake, or None when the service has no latency."""
        if self.is_zero(service):
            return None
        return lambda key: self.sample(service, key)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "time_scale": self.time_scale,
            "seed": self.seed,
            "services": {s: self.distribution(s).describe() for s in SERVICES},
            "mean_wall_s": {s: round(self.mean(s), 6) for s in SERVICES},
        }


def build_profile(
    name: str,
    *,
    time_scale: float = 1.0,
    seed: int = 0,
    overrides: Mapping[str, str] | None = None,
) -> LatencyProfile:
    """A named profile, scaled and seeded; `overrides` maps a service to a spec string."""
    if name not in PROFILES:
        raise ValueError(f"unknown latency profile {name!r}; use one of {sorted(PROFILES)}")
    services = dict(PROFILES[name])
    for service, spec in (overrides or {}).items():
        services[service] = parse_distribution(spec)
    return LatencyProfile(name=name, services=services, time_scale=time_scale, seed=seed)


def scaled(profile: LatencyProfile, time_scale: float) -> LatencyProfile:
    return replace(profile, time_scale=time_scale)


class DelayedDocumentStore:
    """The old document node's database time: `save_document_node` waits first.

    Everything else is delegated to the wrapped store unchanged.
    """

    def __init__(self, inner: DocumentStore, clock: Clock, seconds: Callable[[str], float]) -> None:
        self._inner = inner
        self._clock = clock
        self._seconds = seconds

    def save_document_node(self, node: DocumentNode, *, fence: Fence | None = None) -> None:
        self._clock.sleep(self._seconds(node.uuid))
        self._inner.save_document_node(node, fence=fence)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# --- shared by the load run (harness.perf.loadtest) and its prediction (harness.simulation) ---


def scaled_settings(settings: Settings, time_scale: float) -> dict[str, Any]:
    """The settings given in the old system's seconds, scaled like the profile."""
    return {name: getattr(settings, name) * time_scale for name in SCALED_SETTINGS}


def steady_rate(completions: Sequence[float], end: float | None = None) -> float:
    """Documents per second after the first completion: (n - 1) / (end - first).

    Skips the pipeline's fill time; `end` defaults to the last completion.
    """
    times = sorted(completions)
    if len(times) < 2:
        return 0.0
    stop = end if end is not None else times[-1]
    counted = sum(1 for t in times[1:] if t <= stop)
    span = stop - times[0]
    return counted / span if span > 0 else 0.0
