"""`docpipe experiment`: small, rerunnable measurements of the broker-mode harness.

- `pools`: I/O-bound tasks (a synthetic wait, 50 ms by default) through one
  worker with the thread pool and then the gevent pool at the same concurrency:
  throughput and worker CPU per task (issue 5, item 7).
- `overhead`: a six-hop chain of plain Celery tasks that only send the next
  hop, against the same chain through docpipe's task layer with stages that
  do only their bookkeeping, on one thread-pool worker: ms per hop and per
  document, unloaded and with many chains in flight (issue 5, item 8), and
  their ratio (issue 15: at most 1.5x), also as the median of back-to-back
  pairs of batches, the figure that holds up on a loaded machine.

Each run starts a private redis-server on a free loopback port (never the
user's Redis) and its own worker processes, and removes them afterwards.
Worker CPU is read from /proc/<pid>/stat (utime + stime, pool children too).
Tasks are published while the worker's consumer is cancelled and the timer
starts when it is added back, so the publisher's own cost is not measured.
Every wait is bounded in time and every loop in count.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from pipeline.errors import ConfigurationError
from pipeline.harness.localstack import (
    RedisServer,
    pool_children,
    start_redis,
    stop_process,
    worker_environment,
)
from pipeline.ports.services import Services

Progress = Callable[[str], None]
HOPS = 6
#: Seconds a worker gets to start consuming.
WORKER_START_TIMEOUT_S = 60.0
_TICKS = os.sysconf("SC_CLK_TCK")


# --- pure helpers ---------------------------------------------------------------------------


def parse_proc_stat(text: str, *, reaped_children: bool = True) -> float:
    """CPU seconds (utime + stime, and reaped children's unless told not) from the text
    of /proc/<pid>/stat (or of one thread's, /proc/<pid>/task/<tid>/stat)."""
    fields = text[text.rindex(")") + 2 :].split()
    # Fields 14-17 of proc(5) (utime, stime, cutime, cstime); `fields` starts at field 3.
    return sum(int(value) for value in fields[11 : 15 if reaped_children else 13]) / _TICKS


def parse_context_switches(text: str) -> int:
    """Voluntary plus involuntary context switches from the text of /proc/<pid>/status."""
    total = 0
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            total += int(value)
    return total


@dataclass(frozen=True)
class Batch:
    """One measured batch: `units` tasks or chains of `hops` tasks each."""

    label: str
    units: int
    hops: int
    elapsed_s: float
    worker_cpu_s: float
    redis_cpu_s: float
    redis_commands: int
    #: Of worker_cpu_s, the worker's main thread's: its consumer (receive, ack, events).
    consumer_cpu_s: float = 0.0
    #: The worker's threads' context switches: each wait on the GIL, a lock or a socket.
    context_switches: int = 0
    #: Of redis_commands, the PUBLISHes: Celery's task events (task-sent from the publishing
    #: task; received, started and succeeded flushed by the consumer in one or more).
    redis_publishes: int = 0

    @property
    def tasks(self) -> int:
        return self.units * self.hops

    def row(self) -> dict[str, Any]:
        """The batch as a flat table row (rates per second, costs in ms per task)."""
        tasks = max(self.tasks, 1)
        return {
            "label": self.label,
            "units": self.units,
            "tasks": self.tasks,
            "elapsed_s": round(self.elapsed_s, 3),
            "units_per_s": round(self.units / self.elapsed_s, 1) if self.elapsed_s > 0 else 0.0,
            "tasks_per_s": round(self.tasks / self.elapsed_s, 1) if self.elapsed_s > 0 else 0.0,
            "worker_cpu_ms_per_task": round(1000 * self.worker_cpu_s / tasks, 3),
            "redis_cpu_ms_per_task": round(1000 * self.redis_cpu_s / tasks, 3),
            "redis_commands_per_task": round(self.redis_commands / tasks, 1),
            "consumer_cpu_ms_per_task": round(1000 * self.consumer_cpu_s / tasks, 3),
            "context_switches_per_task": round(self.context_switches / tasks, 1),
            "redis_publishes_per_task": round(self.redis_publishes / tasks, 2),
        }


def best_of(batches: Sequence[Batch]) -> Batch:
    """The batch with the highest throughput (the least disturbed by other load)."""
    if not batches:
        raise ValueError("no batches")
    return min(batches, key=lambda b: b.elapsed_s / max(b.units, 1))


def overhead_summary(
    plain_latency_s: Sequence[float],
    harness_latency_s: Sequence[float],
    plain: Batch,
    harness: Batch,
    hops: int = HOPS,
) -> dict[str, Any]:
    """Per hop and per document, unloaded (median chain latency) and loaded (CPU per hop)."""

    def side(latencies: Sequence[float], batch: Batch) -> dict[str, float]:
        median = statistics.median(latencies) if latencies else float("nan")
        row = batch.row()
        return {
            "chain_ms_p50": round(1000 * median, 2),
            "ms_per_hop_p50": round(1000 * median / hops, 3),
            "loaded_chains_per_s": row["units_per_s"],
            "loaded_ms_per_hop": round(1000 * batch.elapsed_s / max(batch.tasks, 1), 3),
            "worker_cpu_ms_per_hop": row["worker_cpu_ms_per_task"],
            "worker_cpu_ms_per_document": round(row["worker_cpu_ms_per_task"] * hops, 3),
            "redis_cpu_ms_per_hop": row["redis_cpu_ms_per_task"],
            "redis_commands_per_hop": row["redis_commands_per_task"],
            # Worker CPU split: the consumer thread's, and the rest (the pool's threads).
            "consumer_cpu_ms_per_hop": row["consumer_cpu_ms_per_task"],
            "pool_cpu_ms_per_hop": round(
                row["worker_cpu_ms_per_task"] - row["consumer_cpu_ms_per_task"], 3
            ),
            "context_switches_per_hop": row["context_switches_per_task"],
            "event_publishes_per_hop": row["redis_publishes_per_task"],
        }

    a, b = side(plain_latency_s, plain), side(harness_latency_s, harness)
    return {
        "plain": a,
        "harness": b,
        "difference": {key: round(b[key] - a[key], 3) for key in a},
        "ratio": {key: round(b[key] / a[key], 2) for key in a if a[key] > 0},
    }


def paired_ratios(plain: Sequence[Batch], harness: Sequence[Batch]) -> dict[str, float]:
    """Median over rounds of harness / plain, each round's two batches run back to back.

    On a shared machine the load moves between rounds; a ratio of two batches
    run seconds apart moves less than either batch, and the median of a few
    such pairs less again. Worker CPU per hop is the steadier figure under load
    (a busy machine stretches wall time far more than CPU time).
    """
    pairs = list(zip(plain, harness, strict=False))
    if not pairs:
        return {}

    def median_of(per_task: Callable[[Batch], float]) -> float:
        return paired_chain_ratio([per_task(p) for p, _ in pairs], [per_task(h) for _, h in pairs])

    return {
        "rounds": len(pairs),
        "worker_cpu_per_hop": median_of(lambda b: b.worker_cpu_s / max(b.tasks, 1)),
        "loaded_ms_per_hop": median_of(lambda b: b.elapsed_s / max(b.tasks, 1)),
    }


def paired_chain_ratio(plain: Sequence[float], harness: Sequence[float]) -> float:
    """Median of harness / plain over pairs run back to back (unloaded chains, or rounds):
    what drifts between pairs cancels within one. NaN without a pair."""
    values = [h / p for p, h in zip(plain, harness, strict=False) if p > 0]
    return round(statistics.median(values), 2) if values else float("nan")


def pools_verdict(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Which pool the figures favour for I/O-bound queues, and why (one sentence)."""
    threads, gevent = rows.get("threads"), rows.get("gevent")
    if not threads or not gevent:
        return "need both pools to compare"
    faster = "threads" if threads["tasks_per_s"] >= gevent["tasks_per_s"] else "gevent"
    cheaper = (
        "threads"
        if threads["worker_cpu_ms_per_task"] <= gevent["worker_cpu_ms_per_task"]
        else "gevent"
    )
    if faster == cheaper:
        return (
            f"{faster}: more tasks per second "
            f"({threads['tasks_per_s']:.0f} vs {gevent['tasks_per_s']:.0f} threads/gevent) "
            f"and less worker CPU per task "
            f"({threads['worker_cpu_ms_per_task']:.2f} vs "
            f"{gevent['worker_cpu_ms_per_task']:.2f} ms)"
        )
    return (
        f"mixed: {faster} is faster, {cheaper} uses less CPU per task; "
        "pick by whether CPU or wall time is the scarcer resource"
    )


# --- processes ----------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live children (a prefork pool), 0 if it is gone."""
    total = 0.0
    try:
        pids = [pid, *pool_children(pid)]
    except OSError:
        return 0.0
    for each in pids:
        try:
            total += parse_proc_stat(Path(f"/proc/{each}/stat").read_text())
        except (OSError, ValueError):
            continue
    return total


def thread_figures(pid: int) -> tuple[float, int]:
    """CPU seconds of a process's main thread, and its threads' context switches (0 if gone).

    A threads worker's main thread runs its consumer; the pool's threads run the tasks.
    """
    consumer = 0.0
    switches = 0
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0, 0
    for thread in threads:
        try:
            if int(thread) == pid:
                stat = Path(f"/proc/{pid}/task/{thread}/stat").read_text()
                consumer = parse_proc_stat(stat, reaped_children=False)
            switches += parse_context_switches(
                Path(f"/proc/{pid}/task/{thread}/status").read_text()
            )
        except (OSError, ValueError):
            continue
    return consumer, switches


@dataclass
class Stack:
    """A private redis-server, the settings env for workers, and a work folder."""

    workdir: Path
    server: RedisServer
    values: dict[str, str]

    @property
    def env(self) -> dict[str, str]:
        return worker_environment(self.values)

    def settings(self) -> Any:
        from pipeline.settings import Settings

        values: dict[str, Any] = dict(self.values)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextmanager
def private_stack(keep: bool = False) -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="docpipe-experiment-"))
    try:
        with start_redis(workdir / "redis") as server:
            values = {
                "broker_url": server.url(0),
                "redis_url": server.url(1),
                "database_url": f"sqlite:///{workdir / 'experiment.db'}",
                "blob_url": f"file://{workdir / 'blobs'}",
                "eager": "false",
                "latency_profile": "none",
                "fault_injection": "false",
                "allow_cloud": "false",
                "project_name": "experiment",
            }
            yield Stack(workdir, server, values)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def start_worker(stack: Stack, pool: str, concurrency: int, name: str) -> subprocess.Popen[bytes]:
    """A worker of harness.perf.experiment_tasks on the experiment queue, logging to the work dir.

    The one place a worker is started here (pipeline.harness.localstack's WorkerGroup runs
    `docpipe worker`, which does not load the experiment tasks).
    """
    from pipeline.harness.perf.experiment_tasks import EXPERIMENT_QUEUE

    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "pipeline.harness.perf.experiment_tasks",
        "worker",
    ]
    argv += ["--queues", EXPERIMENT_QUEUE, "--pool", pool, "--concurrency", str(concurrency)]
    argv += ["--hostname", f"{name}@%h", "--loglevel", "WARNING"]
    argv += ["--without-mingle", "--without-gossip"]
    with (stack.workdir / f"worker-{name}.log").open("ab") as log:
        return subprocess.Popen(
            argv, cwd=stack.workdir, env=stack.env, stdout=log, stderr=subprocess.STDOUT
        )


@contextmanager
def running_worker(
    stack: Stack, pool: str, concurrency: int, name: str
) -> Iterator[subprocess.Popen[bytes]]:
    process = start_worker(stack, pool, concurrency, name)
    try:
        yield process
    finally:
        stop_process(process, 20.0)


class Driver:
    """Publishes experiment tasks and waits for their completion reports."""

    def __init__(self, stack: Stack, worker: subprocess.Popen[bytes], node: str) -> None:
        from pipeline.runtime.celery_app import configure

        self.stack = stack
        self.app = configure(stack.settings())
        self.worker = worker
        self.node = node
        self.client: redis.Redis = stack.server.client(1)
        self.broker: redis.Redis = stack.server.client(0)

    def close(self) -> None:
        self.client.close()
        self.broker.close()

    def _destination(self) -> list[str]:
        return [f"{self.node}@{socket.gethostname()}"]

    def wait_ready(self) -> None:
        """Until the worker answers a ping, within WORKER_START_TIMEOUT_S."""
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.worker.poll() is not None:
                raise ConfigurationError(
                    f"experiment worker exited ({self.worker.returncode}); see {self.stack.workdir}"
                )
            if self.app.control.ping(destination=self._destination(), timeout=0.5):
                return
        raise ConfigurationError(f"experiment worker did not start; see {self.stack.workdir}")

    def _consume(self, on: bool) -> None:
        from pipeline.harness.perf.experiment_tasks import EXPERIMENT_QUEUE

        control = self.app.control
        change = control.add_consumer if on else control.cancel_consumer
        replies = change(EXPERIMENT_QUEUE, destination=self._destination(), reply=True)
        if not replies:
            raise ConfigurationError("the experiment worker did not answer a consumer change")

    def _wait_for(self, key: str, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while int(self.client.llen(key)) < count:
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"only {self.client.llen(key)} of {count} finished within {timeout_s:g} s; "
                    f"see the worker log in {self.stack.workdir}"
                )
            if self.worker.poll() is not None:
                raise ConfigurationError(f"the experiment worker exited; see {self.stack.workdir}")
            time.sleep(0.02)

    def _redis_cpu(self) -> float:
        return process_cpu_seconds(self.stack.server.process.pid)

    def _commands(self) -> tuple[int, int]:
        """Redis commands so far, and of them PUBLISHes (`Batch.redis_publishes`)."""
        stats = self.client.info("commandstats")
        publishes = int(stats.get("cmdstat_publish", {}).get("calls", 0))
        return sum(int(v["calls"]) for v in stats.values()), publishes

    def batch(
        self,
        label: str,
        units: int,
        hops: int,
        publish: Callable[[str], None],
        timeout_s: float,
    ) -> Batch:
        """Publish `units` with the consumer off, then time them from the consumer's return."""
        key = f"experiment:done:{uuid.uuid4().hex}"
        self._consume(False)
        for _ in range(units):
            publish(key)
        cpu0, redis0 = process_cpu_seconds(self.worker.pid), self._redis_cpu()
        consumer0, switches0 = thread_figures(self.worker.pid)
        commands0, publishes0 = self._commands()
        started = time.perf_counter()
        self._consume(True)
        self._wait_for(key, units, timeout_s)
        elapsed = time.perf_counter() - started
        consumer1, switches1 = thread_figures(self.worker.pid)
        commands1, publishes1 = self._commands()
        return Batch(
            label=label,
            units=units,
            hops=hops,
            elapsed_s=elapsed,
            worker_cpu_s=process_cpu_seconds(self.worker.pid) - cpu0,
            redis_cpu_s=self._redis_cpu() - redis0,
            # Our own INFO/LLEN polls are a handful per batch; not subtracted.
            redis_commands=commands1 - commands0,
            consumer_cpu_s=consumer1 - consumer0,
            context_switches=switches1 - switches0,
            redis_publishes=publishes1 - publishes0,
        )

    def latency(self, send: Callable[[str], None], count: int, timeout_s: float) -> list[float]:
        """Seconds from send to completion report, one unit at a time (an unloaded worker)."""
        result = []
        for _ in range(count):
            key = f"experiment:done:{uuid.uuid4().hex}"
            started = time.perf_counter()
            send(key)
            if self.client.blpop([key], timeout=timeout_s) is None:
                raise ConfigurationError(f"a chain did not finish within {timeout_s:g} s")
            result.append(time.perf_counter() - started)
        return result


# --- experiment: pools ----------------------------------------------------------------------


def run_pools(
    *,
    tasks: int = 1000,
    concurrency: int = 50,
    wait_ms: float = 50.0,
    rounds: int = 2,
    pools: Sequence[str] = ("threads", "gevent"),
    say: Progress = lambda message: None,
    keep: bool = False,
) -> dict[str, Any]:
    """I/O-wait tasks through one worker per pool at the same concurrency."""
    from pipeline.harness.perf.experiment_tasks import EXPERIMENT_QUEUE, io_wait

    seconds = wait_ms / 1000
    ideal = concurrency / seconds if seconds > 0 else float("inf")
    timeout = 30 + 20 * tasks * max(seconds, 0.001) / max(concurrency, 1)
    results: dict[str, Any] = {}
    with private_stack(keep) as stack:
        say(f"private redis-server at {stack.server.url(0)}")
        for pool in pools:
            node = f"pools-{pool}-{os.getpid()}"
            with running_worker(stack, pool, concurrency, node) as worker:
                driver = Driver(stack, worker, node)
                try:
                    driver.wait_ready()

                    def publish(key: str) -> None:
                        io_wait.apply_async(args=(seconds, key), queue=EXPERIMENT_QUEUE)

                    driver.batch("warm-up", min(tasks, 2 * concurrency), 1, publish, timeout)
                    batches = []
                    for index in range(rounds):
                        batch = driver.batch(pool, tasks, 1, publish, timeout)
                        say(f"{pool} x{concurrency} round {index + 1}: {batch.row()}")
                        batches.append(batch)
                finally:
                    driver.close()
            best = best_of(batches).row()
            best["pool"] = pool
            best["fraction_of_ideal"] = round(best["tasks_per_s"] / ideal, 3)
            best["rounds"] = [asdict(b) for b in batches]
            results[pool] = best
    return {
        "experiment": "pools",
        "tasks": tasks,
        "concurrency": concurrency,
        "wait_ms": wait_ms,
        "ideal_tasks_per_s": round(ideal, 1),
        "pools": results,
        "verdict": pools_verdict(results),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }


# --- experiment: harness overhead -------------------------------------------------------------


def _create_documents(stack: Stack, count: int) -> list[tuple[str, int]]:
    """Document rows at `ocr_queued`, as the intake leaves them (no file: no stage reads one)."""
    with _services(stack) as services:
        return _create_queued(services, count)


def _create_queued(services: Any, count: int) -> list[tuple[str, int]]:
    from pipeline.app.stages import mark
    from pipeline.domain.models import SourceDocument, Stage, Status

    project = services.store.ensure_project("experiment")
    created = []
    for _ in range(count):
        document = SourceDocument(
            uuid=str(uuid.uuid4()),
            project_uuid=project,
            original_file_name="noop.txt",
            file_type="txt",
            storage_key="unused",
            size_bytes=0,
        )
        services.store.create_document(document)
        services.store.enqueue(document.uuid)
        mark(services, document, Stage.OCR, Status.OCR_QUEUED)
        created.append((document.uuid, document.processing_version))
    return created


def _services(stack: Stack) -> Services:
    from pipeline.bootstrap import build_services

    return build_services(stack.settings())


def run_overhead(
    *,
    chains: int = 200,
    sequential: int = 150,
    concurrency: int = 4,
    rounds: int = 3,
    pool: str = "threads",
    say: Progress = lambda message: None,
    keep: bool = False,
) -> dict[str, Any]:
    """Plain six-hop chains vs the same chains through docpipe's task layer, one worker
    (`pool`: threads, as the plan's text and graph queues; prefork as its OCR queue; solo).

    Plain and harness batches alternate round by round (and the unloaded
    chains one by one); `paired_ratio` is the median of the rounds' ratios.
    """
    from pipeline.harness.perf.experiment_tasks import EXPERIMENT_QUEUE, harness_hop, plain_hop

    timeout = 60 + 0.5 * chains
    with private_stack(keep) as stack:
        say(f"private redis-server at {stack.server.url(0)}")
        from pipeline.adapters.sql import create_store

        create_store(stack.values["database_url"]).close()
        documents = iter(_create_documents(stack, sequential + rounds * chains + 2 * concurrency))

        def send_plain(key: str) -> None:
            plain_hop.apply_async(args=(0, HOPS, key), queue=EXPERIMENT_QUEUE)

        def send_harness(key: str) -> None:
            document_uuid, version = next(documents)
            harness_hop.apply_async(args=(0, document_uuid, version, key), queue=EXPERIMENT_QUEUE)

        sends = {"plain": send_plain, "harness": send_harness}
        node = f"overhead-{os.getpid()}"
        with running_worker(stack, pool, concurrency, node) as worker:
            driver = Driver(stack, worker, node)
            try:
                driver.wait_ready()
                for send in sends.values():
                    driver.batch("warm-up", 2 * concurrency, HOPS, send, timeout)
                # Plain and harness alternate, chain by chain and round by round, so that
                # both see the same machine (other load comes and goes).
                latencies: dict[str, list[float]] = {label: [] for label in sends}
                for _ in range(sequential):
                    for label, send in sends.items():
                        latencies[label] += driver.latency(send, 1, timeout_s=30)
                for label in sends:
                    p50 = 1000 * statistics.median(latencies[label])
                    say(f"{label}: unloaded chain p50 {p50:.1f} ms")
                batches: dict[str, list[Batch]] = {label: [] for label in sends}
                for index in range(rounds):
                    for label, send in sends.items():
                        batch = driver.batch(label, chains, HOPS, send, timeout)
                        say(f"{label} round {index + 1}: {batch.row()}")
                        batches[label].append(batch)
            finally:
                driver.close()
        statuses = _document_facts(stack)
    summary = overhead_summary(
        latencies["plain"],
        latencies["harness"],
        best_of(batches["plain"]),
        best_of(batches["harness"]),
    )
    return {
        "experiment": "overhead",
        "hops": HOPS,
        "chains": chains,
        "sequential_chains": sequential,
        "worker": pool if pool == "solo" else f"{pool} x{concurrency}",
        **summary,
        "paired_ratio": {
            **paired_ratios(batches["plain"], batches["harness"]),
            "unloaded_pairs": min(len(latencies["plain"]), len(latencies["harness"])),
            "unloaded_ms_per_hop": paired_chain_ratio(latencies["plain"], latencies["harness"]),
        },
        "rounds": {label: [asdict(b) for b in batches[label]] for label in batches},
        "documents": statuses,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }


def _document_facts(stack: Stack) -> dict[str, Any]:
    """How the harness chains left the documents: statuses and history rows per document."""
    with _services(stack) as services:
        return _facts_of(services.store)


def _facts_of(store: Any) -> dict[str, Any]:
    documents = store.list_documents()
    by_status: dict[str, int] = {}
    history_rows = 0
    completed = 0
    for document in documents:
        by_status[document.status.value] = by_status.get(document.status.value, 0) + 1
        if document.status.value == "completed":
            completed += 1
            history_rows += len(store.history(document.uuid))
    return {
        "by_status": by_status,
        "history_rows_per_completed_document": (
            round(history_rows / completed, 1) if completed else None
        ),
    }
