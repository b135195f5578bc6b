"""`docpipe load`: the sequential baseline and the Celery deployment, measured in one run.

Both runs process the same documents with the same latency profile and time
scale. The sequential run is the monolith (pipeline/app/monolith.py) in this
process; the Celery run starts its own redis-server on a free loopback port
and the worker layout as worker processes, then drives it with locust as a
subprocess (pipeline/harness/perf/locustfile.py). Throughput is compared with the
bottleneck bound computed from the layout and the profile.

Every wait is bounded in time, every loop in count; only 127.0.0.1 is used.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from pipeline.adapters.latency import (
    DOCUMENT_DB,
    GRAPH_WRITE,
    LLM_CALL,
    LLM_FIXED_SHARE,
    LatencyProfile,
)
from pipeline.adapters.latency import (
    scaled_settings as scaled_settings,  # also shared with the simulator
)
from pipeline.adapters.latency import steady_rate as steady_rate
from pipeline.domain.models import PROGRESS_ORDER, QUEUES, Status
from pipeline.errors import ConfigurationError
from pipeline.extras import HARNESS_MODULES, require_extra
from pipeline.harness.layout import PLAN_LAYOUT, WorkerSpec, parse_layout
from pipeline.harness.localstack import (
    RedisServer,
    WorkerGroup,
    start_redis,
    stop_process,
    worker_environment,
)
from pipeline.library import SAMPLES
from pipeline.settings import Settings

#: Inside the package, so `docpipe load` works from an install (not only a checkout).
DEFAULT_LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
DEFAULT_DOCUMENTS = SAMPLES
#: Statuses in the order a document passes through them ("time in status" is per stage).
_TIMELINE = PROGRESS_ORDER[PROGRESS_ORDER.index(Status.OCR_QUEUED) :]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class LoadConfig:
    settings: Settings
    profile: LatencyProfile
    files: Sequence[Path]
    report_dir: Path
    users: int = 24
    duration_s: float = 30.0
    baseline_s: float = 30.0
    layout: Sequence[WorkerSpec] = field(default_factory=lambda: parse_layout(PLAN_LAYOUT))
    locustfile: Path = DEFAULT_LOCUSTFILE
    poll_s: float = 0.1
    keep_workdir: bool = False


# --- the bound -------------------------------------------------------------------------


def bottleneck_bound(
    profile: LatencyProfile,
    layout: Sequence[WorkerSpec],
    *,
    chunks_per_document: float,
    rate_limit_calls: int,
    rate_limit_window_s: float,
    llm_calls_per_document: float | None = None,
    llm_tokens_per_document: float = 0.0,
    rate_limit_tokens: int = 0,
    users: int | None = None,
    sequential_seconds_per_document: float | None = None,
) -> dict[str, Any]:
    """The best documents per second the layout, rate limits and latencies allow.

    Per queue: concurrency / mean simulated service time of one document on
    that queue (the OCR job runs outside the workers, which only start and
    poll it, so the ocr queue has no profile-derived limit). The entity time
    of a document is its requests' fixed part plus every chunk's token part
    (`pipeline.adapters.latency.pack_call_seconds`). The shared LLM limits
    allow calls-per-second / LLM calls per document (one per chunk without
    packing) and tokens-per-second / LLM tokens per document. A closed loop
    of `users` cannot exceed users / (the unloaded time of one document).
    Real CPU time is not in the bound: the fraction reached shows what it costs.
    """
    calls = chunks_per_document if llm_calls_per_document is None else llm_calls_per_document
    concurrency: dict[str, int] = {}
    for worker in layout:
        concurrency[worker.queue] = concurrency.get(worker.queue, 0) + worker.concurrency
    call_s = profile.mean(LLM_CALL)
    entity_s = (
        LLM_FIXED_SHARE * calls * call_s + (1 - LLM_FIXED_SHARE) * chunks_per_document * call_s
    )
    service_s = {
        "ocr": 0.0,
        "text": profile.mean(DOCUMENT_DB),
        "entity": entity_s,
        "graph": profile.mean(GRAPH_WRITE),
    }
    limits: dict[str, float] = {}
    for queue, seconds in service_s.items():
        limits[f"queue {queue}"] = concurrency.get(queue, 0) / seconds if seconds > 0 else math.inf
    if calls > 0:
        limits["llm rate limit"] = rate_limit_calls / rate_limit_window_s / calls
    if rate_limit_tokens > 0 and llm_tokens_per_document > 0:
        limits["llm token limit"] = (
            rate_limit_tokens / rate_limit_window_s / llm_tokens_per_document
        )
    if users and sequential_seconds_per_document:
        limits["locust users"] = users / sequential_seconds_per_document
    limiting = min(limits, key=lambda name: limits[name])
    return {
        "docs_per_s": limits[limiting],
        "docs_per_hour": limits[limiting] * 3600,
        "limited_by": limiting,
        "limits_docs_per_hour": {
            k: (v * 3600 if math.isfinite(v) else None) for k, v in limits.items()
        },
        "service_s_per_document": service_s,
        "concurrency": concurrency,
        "chunks_per_document": chunks_per_document,
        "llm_calls_per_document": calls,
        "llm_tokens_per_document": llm_tokens_per_document,
    }


# --- LLM usage and its cost ------------------------------------------------------------


@dataclass(frozen=True)
class LlmUsageTotals:
    """What a run's documents spent on the LLM (the stage's per-document usage records)."""

    documents: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def per_document(self, prices: tuple[float, float] | None) -> dict[str, Any]:
        n = self.documents or 1
        cost = None
        if prices is not None:
            cost = (self.prompt_tokens * prices[0] + self.completion_tokens * prices[1]) / 1e6 / n
        return {
            "documents_with_usage": self.documents,
            "llm_calls_per_document": self.calls / n,
            "llm_tokens_per_document": (self.prompt_tokens + self.completion_tokens) / n,
            "llm_prompt_tokens_per_document": self.prompt_tokens / n,
            "llm_completion_tokens_per_document": self.completion_tokens / n,
            "llm_cost_usd_per_document": cost,
        }


def read_llm_usage_totals(redis_url: str) -> LlmUsageTotals:
    """Sum the entity stage's usage records (pipeline.app.stages.add_llm_usage) in Redis."""
    from pipeline.adapters.redis_features import CACHE_PREFIX, RedisCache
    from pipeline.app.stages import LLM_USAGE, read_llm_usage

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        cache = RedisCache(client)
        documents = calls = prompt = completion = 0
        for raw_key in client.scan_iter(match=f"{CACHE_PREFIX}*:{LLM_USAGE}", count=500):
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            usage = read_llm_usage(cache.get(key.removeprefix(CACHE_PREFIX)))
            documents += 1
            calls += usage.calls
            prompt += usage.prompt_tokens
            completion += usage.completion_tokens
        return LlmUsageTotals(documents, calls, prompt, completion)
    finally:
        client.close()


def llm_price(settings: Settings) -> dict[str, Any]:
    """The list price the cost figures use: the configured OpenAI model's (a setting)."""
    model = settings.openai_model
    prices = settings.llm_prices_usd_per_mtok.get(model)
    return {
        "model": model,
        "input_usd_per_mtok": prices[0] if prices else None,
        "output_usd_per_mtok": prices[1] if prices else None,
        "source": "DOCPIPE_LLM_PRICES_USD_PER_MTOK (default: OpenAI list prices, see settings)",
    }


# --- measurements ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


@dataclass
class DocumentTimeline:
    document_uuid: str
    file: str
    status: str
    submitted_at: float
    completed_at: float | None
    time_in_status: dict[str, float]


def timelines(store: Any) -> list[DocumentTimeline]:
    """Every document of a run's database, with the time spent in each status."""
    result = []
    for document in store.list_documents():
        history = [h for h in store.history(document.uuid) if h.status in _TIMELINE]
        history.sort(key=lambda h: (h.created_at, _TIMELINE.index(h.status)))
        if not history:
            continue
        spent: dict[str, float] = {}
        for entry, following in itertools.pairwise(history):
            spent[entry.status.value] = following.created_at - entry.created_at
        completed = [h.created_at for h in history if h.status is Status.COMPLETED]
        result.append(
            DocumentTimeline(
                document_uuid=document.uuid,
                file=document.original_file_name,
                status=document.status.value,
                submitted_at=history[0].created_at,
                completed_at=completed[0] if completed else None,
                time_in_status=spent,
            )
        )
    return result


def stage_percentiles(runs: Mapping[str, Sequence[DocumentTimeline]]) -> list[dict[str, Any]]:
    rows = []
    for run, docs in runs.items():
        for status in _TIMELINE[:-1]:
            values = [
                d.time_in_status[status.value] for d in docs if status.value in d.time_in_status
            ]
            if not values:
                continue
            rows.append(
                {
                    "run": run,
                    "status": status.value,
                    "n": len(values),
                    "p50_s": percentile(values, 50),
                    "p90_s": percentile(values, 90),
                    "p99_s": percentile(values, 99),
                    "mean_s": statistics.fmean(values),
                }
            )
    return rows


# --- processes ---------------------------------------------------------------------------


class QueueDepthSampler:
    """Samples each queue's length on the broker every `interval_s` in a thread."""

    def __init__(self, broker_url: str, interval_s: float = 0.5, max_samples: int = 20_000):
        self._client = redis.Redis.from_url(broker_url, socket_timeout=2)
        self._interval = interval_s
        self._max = max_samples
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queue-depth", daemon=True)
        self.samples: list[dict[str, float]] = []

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < self._max:
            try:
                with self._client.pipeline(transaction=False) as pipe:
                    for queue in QUEUES:
                        pipe.llen(queue)
                    lengths = pipe.execute()
                sample: dict[str, float] = {"t": time.time()}
                sample.update({q: float(n) for q, n in zip(QUEUES, lengths, strict=True)})
                self.samples.append(sample)
            except redis.RedisError:
                pass
            self._stop.wait(self._interval)

    def __enter__(self) -> QueueDepthSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._client.close()


def _common_values(config: LoadConfig) -> dict[str, Any]:
    return stack_values(config.settings, config.profile, project_name="load")


def stack_values(s: Settings, p: LatencyProfile, *, project_name: str) -> dict[str, Any]:
    """Settings every process of a private run shares: the profile, scaled, no faults or cloud."""
    values: dict[str, Any] = {
        "latency_profile": s.latency_profile,
        "latency_overrides": dict(s.latency_overrides),
        "time_scale": p.time_scale,
        "latency_seed": p.seed,
        "llm_rate_limit_calls": s.llm_rate_limit_calls,
        "llm_rate_limit_tokens": s.llm_rate_limit_tokens,
        "llm_pack_tokens": s.llm_pack_tokens,
        "ocr_max_polls": s.ocr_max_polls,
        "fault_injection": "false",
        "allow_cloud": "false",
        "project_name": project_name,
    }
    values.update(scaled_settings(s, p.time_scale))
    return values


@contextmanager
def worker_layout(
    workdir: Path,
    values: Mapping[str, Any],
    layout: Sequence[WorkerSpec],
    say: Progress,
    *,
    name: str = "load",
) -> Iterator[tuple[WorkerGroup, dict[str, str]]]:
    """The layout as worker processes on `values` (broker, database...), consuming every queue.

    Yields the workers and the environment they share (for more processes of
    the same run); stops them on exit.
    """
    from pipeline.adapters.sql import create_store
    from pipeline.runtime.celery_app import configure

    env = worker_environment(values)
    # Create the schema once, before several processes race to do it.
    create_store(values["database_url"]).close()
    with WorkerGroup(workdir, env, loglevel="WARNING", stop_timeout_s=20) as workers:
        for spec in layout:
            queues = "+".join(spec.queues)
            workers.start(
                spec.queues,
                pool=spec.pool,
                concurrency=spec.concurrency,
                name=f"{name}-{queues}",
                log=queues,
            )
            say(f"celery: worker {queues} ({spec.pool} x{spec.concurrency})")
        app = configure(Settings(_env_file=None, **values))  # type: ignore[call-arg]
        workers.wait_for_consumers(app, QUEUES, timeout_s=60)
        yield workers, env


# --- the two runs ----------------------------------------------------------------------------


def run_baseline(config: LoadConfig, workdir: Path, server: RedisServer, say: Progress) -> Path:
    """The monolith in this process; returns its database path."""
    from pipeline.app.monolith import run_sequential
    from pipeline.bootstrap import build_services

    database = workdir / "sequential.db"
    values = _common_values(config)
    values.update(
        database_url=f"sqlite:///{database}",
        blob_url=f"file://{workdir / 'blobs-sequential'}",
        redis_url=server.url(2),
        eager=True,
    )
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    with build_services(settings) as services:
        say(f"sequential baseline: the monolith for at least {config.baseline_s:g}s (whole rounds)")
        results = run_sequential(
            services,
            config.files,
            min_seconds=config.baseline_s,
            max_documents=max(len(config.files), 5000),
            on_done=lambda r: say(
                f"  sequential: {Path(r.file).name} {r.status} in {r.seconds:.2f}s"
            ),
        )
        failed = [r for r in results if r.status is not Status.COMPLETED]
        if failed:
            say(f"  {len(failed)} sequential document(s) did not complete")
        return database


def run_celery(
    config: LoadConfig, workdir: Path, server: RedisServer, say: Progress
) -> tuple[Path, list[dict[str, float]], dict[str, Any]]:
    """Workers + locust; returns the run's database, queue-depth samples and locust facts."""
    database = workdir / "celery.db"
    values = _common_values(config)
    values.update(
        database_url=f"sqlite:///{database}",
        blob_url=f"file://{workdir / 'blobs-celery'}",
        broker_url=server.url(0),
        redis_url=server.url(1),
        eager="false",
    )
    with worker_layout(workdir, values, config.layout, say) as (_, env):
        say(
            "celery: watch it from another terminal with "
            f"DOCPIPE_BROKER_URL={values['broker_url']} DOCPIPE_REDIS_URL={values['redis_url']} "
            f"DOCPIPE_DATABASE_URL={values['database_url']} docpipe monitor"
        )
        say(f"celery: locust, {config.users} users for {config.duration_s:g}s")
        locust_env = dict(env)
        locust_env.update(
            DOCPIPE_LOAD_FILES=os.pathsep.join(str(f.resolve()) for f in config.files),
            DOCPIPE_LOAD_POLL_S=str(config.poll_s),
            DOCPIPE_LOAD_E2E_TIMEOUT_S=str(max(60.0, config.duration_s * 2)),
        )
        csv_prefix = config.report_dir / "locust"
        argv = [sys.executable, "-m", "locust", "-f", str(config.locustfile), "--headless"]
        argv += ["--users", str(config.users), "--spawn-rate", str(config.users)]
        argv += ["--run-time", f"{max(1, round(config.duration_s))}s", "--only-summary"]
        argv += ["--csv", str(csv_prefix), "--html", str(config.report_dir / "locust.html")]
        argv += ["--loglevel", "WARNING", "--exit-code-on-error", "0"]
        started = time.time()
        with (
            QueueDepthSampler(values["broker_url"]) as sampler,
            (workdir / "locust.log").open("ab") as log,
        ):
            locust = subprocess.Popen(
                argv, cwd=workdir, env=locust_env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                code = locust.wait(timeout=config.duration_s + 90)
            except subprocess.TimeoutExpired:
                stop_process(locust, 15.0)
                raise ConfigurationError(
                    f"locust did not stop; see {workdir / 'locust.log'}"
                ) from None
        ended = time.time()
        if code != 0:
            tail = (workdir / "locust.log").read_text(errors="replace")[-2000:]
            raise ConfigurationError(f"locust exited with {code}:\n{tail}")
        facts = {"started_at": started, "ended_at": ended, "locust": _locust_stats(csv_prefix)}
        return database, sampler.samples, facts


def _locust_stats(prefix: Path) -> dict[str, dict[str, Any]]:
    path = Path(f"{prefix}_stats.csv")
    if not path.exists():
        return {}
    stats = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            if row.get("Type") in ("submit", "e2e"):
                stats[row["Type"]] = {
                    "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]),
                    "median_ms": float(row["Median Response Time"]),
                    "p95_ms": float(row.get("95%", "nan") or "nan"),
                    "mean_ms": float(row["Average Response Time"]),
                }
    return stats


# --- the whole run ----------------------------------------------------------------------------


def run_load(config: LoadConfig, say: Progress = lambda message: None) -> dict[str, Any]:
    """Both runs, the comparison and the report files; returns the summary."""
    from pipeline.adapters.sql import create_store

    # locust (the load) and matplotlib (the chart) are the harness extra's.
    require_extra("harness", HARNESS_MODULES["load"], "docpipe load")
    if not config.files:
        raise ConfigurationError("no documents to load")
    if not config.locustfile.exists():
        raise ConfigurationError(f"locustfile not found: {config.locustfile}")
    config.report_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="docpipe-load-"))
    try:
        with start_redis(workdir) as server:
            say(f"private redis-server at {server.url(0).removesuffix('/0')}")
            seq_db = run_baseline(config, workdir, server, say)
            seq_usage = read_llm_usage_totals(server.url(2))
            celery_db, depth, facts = run_celery(config, workdir, server, say)
            celery_usage = read_llm_usage_totals(server.url(1))
        seq_store = create_store(f"sqlite:///{seq_db}", create=False)
        celery_store = create_store(f"sqlite:///{celery_db}", create=False)
        seq_docs = timelines(seq_store)
        celery_docs = timelines(celery_store)
        chunks = [seq_store.counts(d.document_uuid).chunks for d in seq_docs]
        seq_store.close()
        celery_store.close()
        summary = summarize(
            config, seq_docs, celery_docs, depth, facts, chunks, (seq_usage, celery_usage)
        )
        summary["predicted"] = predicted(config)
        write_report(config.report_dir, summary, seq_docs, celery_docs, depth)
        return summary
    finally:
        if config.keep_workdir:
            say(f"work files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def predicted(config: LoadConfig) -> dict[str, Any]:
    """The virtual-time simulator's figures for this run (pipeline/simulation), with errors."""
    from pipeline.harness.simulation.predict import document_shapes, predict_load

    shapes = document_shapes(
        config.files, measure_cpu=True, pack_tokens=config.settings.llm_pack_tokens
    )
    return predict_load(
        shapes,
        config.profile,
        config.settings,
        config.layout,
        users=config.users,
        poll_s=config.poll_s,
    )


def summarize(
    config: LoadConfig,
    seq_docs: Sequence[DocumentTimeline],
    celery_docs: Sequence[DocumentTimeline],
    depth: Sequence[Mapping[str, float]],
    facts: Mapping[str, Any],
    chunks: Sequence[int],
    usage: tuple[LlmUsageTotals, LlmUsageTotals] = (LlmUsageTotals(), LlmUsageTotals()),
) -> dict[str, Any]:
    price = llm_price(config.settings)
    prices = (
        (price["input_usd_per_mtok"], price["output_usd_per_mtok"])
        if price["input_usd_per_mtok"] is not None
        else None
    )
    seq_llm = usage[0].per_document(prices)
    celery_llm = usage[1].per_document(prices)
    seq_done = [d.completed_at for d in seq_docs if d.completed_at is not None]
    celery_done = [
        d.completed_at
        for d in celery_docs
        if d.completed_at is not None and d.completed_at <= facts["ended_at"]
    ]
    seq_rate = steady_rate(seq_done)
    celery_rate = steady_rate(celery_done, end=facts["ended_at"])
    seq_e2e = [d.completed_at - d.submitted_at for d in seq_docs if d.completed_at is not None]
    celery_e2e = [
        d.completed_at - d.submitted_at for d in celery_docs if d.completed_at is not None
    ]
    settings = config.settings
    scale = config.profile.time_scale
    bound = bottleneck_bound(
        config.profile,
        config.layout,
        chunks_per_document=statistics.fmean(chunks) if chunks else 0.0,
        rate_limit_calls=settings.llm_rate_limit_calls,
        rate_limit_window_s=settings.llm_rate_limit_window_s * scale,
        # The sequential run's: every document of it went through extraction once.
        llm_calls_per_document=seq_llm["llm_calls_per_document"] if usage[0].documents else None,
        llm_tokens_per_document=seq_llm["llm_tokens_per_document"],
        rate_limit_tokens=settings.llm_rate_limit_tokens,
        users=config.users,
        sequential_seconds_per_document=statistics.fmean(seq_e2e) if seq_e2e else None,
    )
    ratio = celery_rate / seq_rate if seq_rate > 0 else 0.0

    def run_summary(
        rate: float, done: Sequence[float], docs: int, e2e: Sequence[float]
    ) -> dict[str, Any]:
        return {
            "documents_submitted": docs,
            "documents_completed": len(done),
            "docs_per_s": rate,
            "docs_per_hour": rate * 3600,
            # The same rate in the old system's time (the profile's unscaled seconds).
            "simulated_docs_per_hour": rate * 3600 * scale,
            "e2e_p50_s": percentile(e2e, 50),
            "e2e_p95_s": percentile(e2e, 95),
        }

    return {
        "profile": config.profile.describe(),
        "layout": [asdict(w) for w in config.layout],
        "users": config.users,
        "duration_s": config.duration_s,
        "baseline_s": config.baseline_s,
        "documents": [str(f) for f in config.files],
        "sequential": {**run_summary(seq_rate, seq_done, len(seq_docs), seq_e2e), **seq_llm},
        "celery": {
            **run_summary(celery_rate, celery_done, len(celery_docs), celery_e2e),
            **celery_llm,
        },
        "ratio": ratio,
        # Of the Celery run (the sequential run's are under "sequential").
        **{k: v for k, v in celery_llm.items() if k != "documents_with_usage"},
        "llm_price": price,
        "llm_pack_tokens": settings.llm_pack_tokens,
        "llm_rate_limit": {
            "calls": settings.llm_rate_limit_calls,
            "tokens": settings.llm_rate_limit_tokens,
            "window_s": settings.llm_rate_limit_window_s * scale,
        },
        "bound": bound,
        "fraction_of_bound": celery_rate / bound["docs_per_s"] if bound["docs_per_s"] else 0.0,
        "ratio_bound": bound["docs_per_s"] / seq_rate if seq_rate > 0 else None,
        "locust": facts.get("locust", {}),
        "stage_latency": stage_percentiles({"sequential": seq_docs, "celery": celery_docs}),
        "queue_depth_max": {q: max((s[q] for s in depth), default=0.0) for q in QUEUES},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }


# --- the report --------------------------------------------------------------------------------


def write_report(
    report_dir: Path,
    summary: Mapping[str, Any],
    seq_docs: Sequence[DocumentTimeline],
    celery_docs: Sequence[DocumentTimeline],
    depth: Sequence[Mapping[str, float]],
) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    with (report_dir / "throughput.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "completed", "docs_per_hour", "simulated_docs_per_hour"])
        for run in ("sequential", "celery"):
            r = summary[run]
            writer.writerow(
                [
                    run,
                    r["documents_completed"],
                    f"{r['docs_per_hour']:.1f}",
                    f"{r['simulated_docs_per_hour']:.1f}",
                ]
            )
        writer.writerow(["bound", "", f"{summary['bound']['docs_per_hour']:.1f}", ""])
    with (report_dir / "documents.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "document_uuid", "file", "status", "submitted_at", "completed_at"])
        for run, docs in (("sequential", seq_docs), ("celery", celery_docs)):
            for d in docs:
                writer.writerow(
                    [run, d.document_uuid, d.file, d.status, d.submitted_at, d.completed_at]
                )
    with (report_dir / "stage_latency.csv").open("w", newline="") as handle:
        fields = ["run", "status", "n", "p50_s", "p90_s", "p99_s", "mean_s"]
        latency_writer = csv.DictWriter(handle, fields)
        latency_writer.writeheader()
        latency_writer.writerows(summary["stage_latency"])
    with (report_dir / "queue_depth.csv").open("w", newline="") as handle:
        depth_writer = csv.DictWriter(handle, ["t", *QUEUES])
        depth_writer.writeheader()
        depth_writer.writerows(depth)
    write_chart(report_dir / "load.png", summary, seq_docs, celery_docs, depth)


def write_chart(
    path: Path,
    summary: Mapping[str, Any],
    seq_docs: Sequence[DocumentTimeline],
    celery_docs: Sequence[DocumentTimeline],
    depth: Sequence[Mapping[str, float]],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5))
    celery_start = min((d.submitted_at for d in celery_docs), default=0.0)
    for label, docs in (("sequential (monolith)", seq_docs), ("celery (locust)", celery_docs)):
        start = min((d.submitted_at for d in docs), default=0.0)
        done = sorted(d.completed_at - start for d in docs if d.completed_at is not None)
        ax1.step(done, range(1, len(done) + 1), where="post", label=label)
    ax1.set(title="Completed documents", xlabel="seconds since first submit", ylabel="documents")
    ax1.legend()

    rows = summary["stage_latency"]
    statuses = [s.value for s in _TIMELINE[:-1]]
    width = 0.2
    for offset, (run, q) in enumerate(
        (("sequential", "p50_s"), ("celery", "p50_s"), ("sequential", "p90_s"), ("celery", "p90_s"))
    ):
        values = [
            next((r[q] for r in rows if r["run"] == run and r["status"] == s), 0.0)
            for s in statuses
        ]
        xs = [i + (offset - 1.5) * width for i in range(len(statuses))]
        ax2.bar(xs, values, width, label=f"{run} {q[:3]}")
    ax2.set_xticks(range(len(statuses)), statuses, rotation=35, ha="right", fontsize=8)
    ax2.set(title="Time in each status (per-stage latency)", ylabel="seconds")
    ax2.legend(fontsize=8)

    for queue in QUEUES:
        ax3.plot([s["t"] - celery_start for s in depth], [s[queue] for s in depth], label=queue)
    ax3.set(
        title="Queue depth (celery run)", xlabel="seconds since first submit", ylabel="messages"
    )
    ax3.legend()
    seq, cel = summary["sequential"], summary["celery"]
    bound = summary["bound"]
    fig.suptitle(
        f"sequential {seq['docs_per_hour']:,.0f} docs/h, "
        f"celery {cel['docs_per_hour']:,.0f} docs/h, ratio {summary['ratio']:.1f}x, "
        f"bound {bound['docs_per_hour']:,.0f} docs/h "
        f"({summary['fraction_of_bound']:.0%} reached), "
        f"time scale {summary['profile']['time_scale']:g}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
