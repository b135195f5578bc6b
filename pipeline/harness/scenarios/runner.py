"""Run a scenario in eager mode (in this process) or broker mode (real workers).

Every run is isolated: its own directory with a SQLite file and blobs, its own
Redis namespace (a fresh fakeredis server in eager mode, a private
redis-server in broker mode). Faults are installed in Redis with
`install_faults`, so worker processes see exactly what the runner declared.
After the documents reach a terminal status the runner evaluates the
scenario's expectations and the invariants every run checks.
"""

from __future__ import annotations

import logging
import shlex
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import kombu.exceptions
import redis
from pydantic import ValidationError

from fakes.faults import (
    ACTIVE_FAULTS_KEY,
    FaultRule,
    RedisFaultInjector,
    SharedFaultInjector,
    WorkerKilled,
    clear_faults,
    install_faults,
)
from fakes.faulty_ports import unfaulted
from pipeline.adapters.clock import SystemClock
from pipeline.app.intake import claim_own, dispatch, submit_file
from pipeline.bootstrap import (
    Services,
    discard_fake_redis_server,
    redis_client,
    start,
    use_services,
)
from pipeline.domain.models import QUEUES, QueueStatus, Stage, Status
from pipeline.errors import ConfigurationError, TransientError
from pipeline.extras import HARNESS_MODULES, missing_extra_reason
from pipeline.harness.scenarios.documents import ScenarioDocument, materialize
from pipeline.harness.scenarios.integrity import integrity_problems
from pipeline.harness.scenarios.model import (
    PROCESS_KILLING_KINDS,
    Bound,
    BrokerName,
    Count,
    Mode,
    Scenario,
    ScenarioError,
    as_bound,
    fault_modes,
    matches,
)
from pipeline.runtime import celery_app
from pipeline.settings import Settings, redact_url, settings_over_environment

log = logging.getLogger(__name__)

#: Submissions of one file the runner makes before it gives up (intake under faults).
INTAKE_ATTEMPTS = 8
#: Events a sim-mode run may take; past it the run is a failure, not a hang. The
#: library's largest sim run takes 1,031 events and the largest of `docpipe explore
#: --seed 1`'s first 300 schedules that end 1,150: 20,000 leaves ~17 times that. A run
#: that never ends costs all of them (0.5-1 ms of CPU each, the most of an exploration's
#: CPU when there are any).
SIM_MAX_EVENTS = 20_000


@dataclass
class Check:
    """One expectation or invariant, with what was expected and what was measured."""

    kind: str  # "expectation" | "invariant"
    name: str
    passed: bool
    expected: str
    measured: str


@dataclass
class DocumentOutcome:
    name: str
    document_uuid: str
    status: str
    error: str | None
    chunks: int
    mentions: int
    entities: int
    relationships: int
    processing_version: int


@dataclass
class RunReport:
    scenario: str
    file: str
    mode: str
    seed: int
    passed: bool
    elapsed_s: float
    replay: str
    skipped: str | None = None
    error: str | None = None
    checks: list[Check] = field(default_factory=list)
    documents: list[DocumentOutcome] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    #: The run folder (database, blobs, worker logs), when it was kept (`--keep`);
    #: None when it was a temporary folder, removed after the run.
    workdir: str | None = None
    #: Sim mode: virtual time and the scheduler's event counts (deliveries, restores...).
    sim: dict[str, Any] = field(default_factory=dict)
    #: Broker mode with `broker.queue_processor`: file -> stage sent again for a document
    #: that made no progress for `queue_stale_after_s` (its message was lost).
    resumed: dict[str, str] = field(default_factory=dict)
    #: Broker mode: which broker carried the tasks (`redis` or `rabbitmq`).
    broker: str | None = None
    #: Broker mode: False when the workers ran as separate hosts (no shared filesystem).
    shared_filesystem: bool = True
    #: The faults failed every intake attempt of a document (`error` says which): the
    #: documents never got in, so the run judged nothing (`IntakeGaveUp`).
    intake_failed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        """The mode, and the broker when it is not Redis: `broker-rabbitmq`."""
        if self.mode == "broker" and self.broker not in (None, "redis"):
            return f"{self.mode}-{self.broker}"
        return self.mode


#: How long broker mode waits for its workers to consume every queue. Ends as soon as they
#: do; a worker start costs ~1.7 s of CPU, and a layout of eight on a busy 2-core host
#: took over 30 s.
WORKERS_READY_TIMEOUT_S = 90.0

#: How a simulated run that passed its event cap is reported (RunReport.error).
NEVER_ENDED = "the simulated run never ended"


class IntakeGaveUp(ScenarioError):
    """The faults failed every intake attempt of a document: nothing was submitted to judge.

    Faults on the store or blobs meet the runner's submissions too (an intake during
    an outage); a load heavy enough, e.g. a store call killing the process more often
    than not, keeps a document out for all `INTAKE_ATTEMPTS` re-runs.
    """


def replay_command(
    path: Path | None,
    mode: str,
    seed: int,
    broker: str = "redis",
    *,
    shared_filesystem: bool = True,
) -> str:
    target = shlex.quote(str(path)) if path is not None else "SCENARIO.yaml"
    on = f" --broker {broker}" if mode == "broker" and broker != "redis" else ""
    flag = "" if shared_filesystem else " --no-shared-fs"
    return f"docpipe scenario run {target} --mode {mode}{on} --seed {seed}{flag}"


def broker_skip_reason(scenario: Scenario, broker: str) -> str | None:
    """Why a broker-mode run on `broker` is skipped (the scenario is another broker's)."""
    if broker in scenario.broker.brokers:
        return None
    because = scenario.broker.only_because or "declared by the scenario"
    return f"{'/'.join(scenario.broker.brokers)}-specific: {because}"


#: Settings every scenario run starts from (before the scenario's own overrides).
def base_settings(scenario: Scenario) -> dict[str, Any]:
    return {
        "project_name": scenario.name,
        "fault_injection": True,
        "ocr_poll_interval_s": 0.2,
        "retry_backoff_base_s": 0.2,
        "retry_backoff_max_s": 2.0,
        # The shared LLM limit only matters to scenarios that set it themselves.
        "llm_rate_limit_calls": 100000,
        "llm_rate_limit_tokens": 0,
        "fake_ocr_polls_until_done": scenario.adapters.ocr_polls_until_done,
    }


def settings_problem(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: "
        f"{str(err['msg']).removeprefix('Value error, ')}"
        for err in exc.errors()
    )


# --- the runs ------------------------------------------------------------------------------


def run_scenario(
    scenario: Scenario,
    path: Path | None,
    mode: Mode,
    *,
    seed: int | None = None,
    workdir: Path | None = None,
    in_memory: bool = False,
    broker: BrokerName = "redis",
    shared_filesystem: bool | None = None,
    stop_in_background: bool = False,
) -> RunReport:
    """Run one scenario in one mode.

    `shared_filesystem=False` deploys broker-mode workers as separate hosts (None:
    what the scenario's `deployment` says); `in_memory` (sim mode) keeps the
    database and blobs in memory, nothing on disk (docpipe explore runs thousands;
    the kept run folder then has no database). `stop_in_background` (broker mode,
    with a `workdir` the caller keeps): the run returns once judged and its
    workers, Redis and throw-away database stop in a thread; the caller calls
    `real_workers.background_stops.wait()` before it ends.
    """
    if stop_in_background and workdir is None:
        raise ValueError("stop_in_background needs a workdir that outlives the run")
    seed = scenario.seed if seed is None else seed
    started = time.perf_counter()
    if shared_filesystem is None:
        shared_filesystem = scenario.deployment.shared_filesystem
    # Eager and sim runs are one process: there is no other host to share with.
    separate_hosts = mode == "broker" and not shared_filesystem
    report = RunReport(
        scenario=scenario.name,
        file=str(path) if path is not None else "-",
        mode=mode,
        seed=seed,
        passed=False,
        elapsed_s=0.0,
        replay=replay_command(path, mode, seed, broker, shared_filesystem=not separate_hosts),
        broker=broker if mode == "broker" else None,
        shared_filesystem=not separate_hosts,
    )
    skip = sim_skip_reason(scenario) if mode == "sim" else None
    simulated_only = [
        f"{f.kind} on {f.port}.{f.operation or '*'}"
        for f in scenario.faults
        if mode != "sim" and mode not in fault_modes(f.port, f.operation, f.kind)
    ]
    if simulated_only:
        skip = (
            f"{mode} mode cannot inject {', '.join(simulated_only)}: simulator-only fault(s), "
            "which a real deployment cannot be made to suffer on cue; run it with --mode sim"
        )
    elif mode != "sim" and mode not in scenario.modes:
        skip = f"declares modes: [{', '.join(scenario.modes)}]"
    elif mode == "broker" and (off := broker_skip_reason(scenario, broker)):
        skip = off
    elif (scenario.adapters.profile == "sim-cloud" or separate_hosts) and (
        missing := sim_cloud_missing()
    ):
        skip = missing  # moto and flask-cors are the harness extra's (pip install docpipe[harness])
    elif separate_hosts and postgres_admin_url() is None:
        skip = (
            "workers as separate hosts share no SQLite file: set DOCPIPE_SCENARIO_POSTGRES_URL "
            "to an admin URL (a throw-away database is created there and dropped)"
        )
    elif mode == "broker" and needs_postgres(scenario) and postgres_admin_url() is None:
        skip = (
            "cuts the database off, which needs PostgreSQL: set DOCPIPE_SCENARIO_POSTGRES_URL "
            "to an admin URL (a throw-away database is created there and dropped)"
        )
    if skip is not None:
        report.skipped = skip
        report.passed = True
        return report
    with _workdir(workdir, scenario.name, mode) as directory:
        try:
            runner = {"eager": EagerRun, "broker": BrokerRun, "sim": SimRun}[mode]
            run = runner(scenario, path, seed, directory, report)
            run.in_memory = in_memory
            run.broker = broker
            run.stop_in_background = stop_in_background
            run.run()
        except ScenarioError as exc:
            report.error = str(exc)
            report.intake_failed = isinstance(exc, IntakeGaveUp)
        report.passed = report.error is None and all(c.passed for c in report.checks)
    if workdir is not None:
        report.workdir = str(directory)
    else:
        _forget_removed_folder(report, directory)
    report.elapsed_s = round(time.perf_counter() - started, 2)
    return report


def kept_run_folder(keep: Path, name: str, mode: str) -> Path:
    """`keep/<scenario>-<mode>`, or `-2`, `-3`... when an earlier run left that one."""
    base = keep / f"{name}-{mode}"
    candidate, number = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def _forget_removed_folder(report: RunReport, directory: Path) -> None:
    """The temporary folder is gone: messages point to --keep instead of naming it."""
    instead = "the run folder, removed; rerun with --keep DIR to keep it"
    if report.error:
        report.error = report.error.replace(str(directory), instead)
    for check in report.checks:
        check.measured = check.measured.replace(str(directory), instead)


@contextmanager
def _workdir(given: Path | None, name: str, mode: str) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix=f"docpipe-scenario-{name}-{mode}-") as tmp:
        yield Path(tmp)


class _Run:
    """What both modes share: submit, fault, wait, act, measure, judge."""

    mode: str = ""
    #: Sim mode only: SQLite and blobs in memory (see run_scenario).
    in_memory: bool = False
    #: Broker mode: the broker the tasks go through.
    broker: BrokerName = "redis"
    #: Broker mode: the environment stops in a thread (`run_scenario`).
    stop_in_background: bool = False

    def __init__(
        self, scenario: Scenario, path: Path | None, seed: int, workdir: Path, report: RunReport
    ) -> None:
        self.scenario = scenario
        self.path = path
        self.seed = seed
        self.workdir = workdir
        self.report = report
        self.source = str(path) if path is not None else scenario.name

    # The two hooks each mode provides.
    def start(self, values: dict[str, Any]) -> Services:
        raise NotImplementedError

    def wait(self, services: Services, uuids: list[str]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def extra_checks(self, services: Services) -> list[Check]:
        return []

    def fault_state(self, services: Services) -> redis.Redis:
        """Where the fault rules and counters go: Redis, which worker processes read."""
        return services.redis

    def shared_services(self, stack: ExitStack, values: dict[str, Any]) -> dict[str, Any]:
        """Settings of services this mode starts for the run (in `stack`) besides the profile's."""
        return {}

    def validated_values(self, values: dict[str, Any]) -> dict[str, Any]:
        """The settings the run's checks refuse or accept (the broker's rules apply)."""
        if self.mode != "broker" or self.broker != "rabbitmq":
            return values
        from pipeline.harness.scenarios.real_workers import RABBITMQ_TIME_LIMITS

        limits = {k.removeprefix("DOCPIPE_").lower(): v for k, v in RABBITMQ_TIME_LIMITS.items()}
        return limits | values | {"broker_url": "amqp://guest@127.0.0.1:5672/validation"}

    def run(self) -> None:
        scenario = self.scenario
        documents = materialize(scenario, self.path, self.seed, self.workdir / "inbox")
        values = base_settings(scenario) | scenario.overrides()
        rejected = scenario.expect.settings_rejected
        try:
            settings_over_environment(self.validated_values(values))
        except ValidationError as exc:
            problem = settings_problem(exc)
            if rejected is None:
                raise ScenarioError(f"{self.source}: settings: {problem}") from None
            self.report.checks.append(
                Check(
                    "expectation",
                    "settings_rejected",
                    rejected.lower() in problem.lower(),
                    f"settings refused, mentioning {rejected!r}",
                    problem,
                )
            )
            return
        if rejected is not None:
            self.report.checks.append(
                Check(
                    "expectation",
                    "settings_rejected",
                    False,
                    f"settings refused, mentioning {rejected!r}",
                    "the settings were accepted",
                )
            )
            return
        with ExitStack() as cloud:
            if scenario.adapters.profile == "sim-cloud":
                from pipeline.harness.scenarios.cloud import sim_cloud

                polls = scenario.adapters.ocr_polls_until_done
                values |= cloud.enter_context(sim_cloud(scenario.name, polls_until_done=polls))
            values |= self.shared_services(cloud, values)
            try:
                services = self.start(values)
                self._run_with(services, documents)
            finally:
                self.stop()

    def _run_with(self, faulted: Services, documents: list[ScenarioDocument]) -> None:
        scenario = self.scenario
        # The runner's own submissions, claims and reads never meet a fault: the tasks
        # run on the (faulted) current services, or in the workers' processes.
        services = unfaulted(faulted)
        project_uuid = services.store.ensure_project(scenario.name)
        namespace = f"docpipe:faults:scenario:{uuid.uuid4().hex[:12]}"
        # On the services' clock: a window counts virtual time in sim mode, wall time otherwise.
        # Installed before intake (faults on the blob store and the document rows hit the
        # submissions too), with `documents` filters matching nothing until the uuids exist.
        declared, rules = self._rules({}, pending=True)
        board = self.fault_state(services)
        injector = RedisFaultInjector(
            board, rules, namespace=namespace, seed=self.seed, clock=services.clock
        )
        install_faults(board, injector)
        try:
            by_name: dict[str, str] = {}
            for document in documents:
                by_name[document.name] = self._submit(faulted, document.path, project_uuid)
            names = {uuid_: name for name, uuid_ in by_name.items()}
            declared, rules = self._rules(by_name)
            injector = RedisFaultInjector(
                board, rules, namespace=namespace, seed=self.seed, clock=services.clock
            )
            # Same namespace, not re-armed: the counters of the intake's calls carry on.
            board.set(ACTIVE_FAULTS_KEY, injector.to_json())
            for name, path in [(d.name, d.path) for d in documents]:
                if injector.before("intake", "submit", by_name[name]).response == "duplicate":
                    # The same file submitted again while the first is in flight (two
                    # `docpipe run`s at once): a second document with the same bytes.
                    again = f"{name} (submitted again)"
                    by_name[again] = self._submit(faulted, path, project_uuid)
                    names[by_name[again]] = again
            uuids = list(by_name.values())
            for document_uuid in uuids:
                claim_own(services, document_uuid, worker=f"scenario-{scenario.name}")
                self.dispatch(services, document_uuid)
            self.wait(services, uuids)
            for action in scenario.then:
                self._act(services, action, by_name)
                self.wait(services, uuids)
            fired, calls = injector.fired(), injector.calls()
            self.report.calls = injector.operation_calls()
        finally:
            clear_faults(board)
        self.report.faults = [
            {"fault": rules[i].describe(), "calls": calls[i], "fired": fired[i]}
            for i in range(declared)
        ]
        outcomes = [_outcome(services, name, by_name[name]) for name in by_name]
        self.report.documents = outcomes
        ours = set(names)
        self.report.dead_letters = [
            {**letter, "name": names[str(letter["document_uuid"])]}
            for letter in services.store.dead_letters()
            if letter["document_uuid"] in ours
        ]
        self.report.checks.extend(self._expectations())
        self.report.checks.extend(_invariants(services, outcomes, fired[:declared], scenario))
        self.report.checks.extend(self.extra_checks(services))

    def _submit(self, faulted: Services, path: Path, project_uuid: str) -> str:
        """Submit under the faults; a failed intake is run again, as an operator re-runs
        `docpipe run` (a document row it left behind is not the run's)."""
        problem: BaseException | None = None
        for attempt in range(INTAKE_ATTEMPTS):
            try:
                return submit_file(faulted, path, project_uuid).document_uuid
            except (TransientError, redis.RedisError, WorkerKilled) as exc:
                problem = exc
                faulted.clock.sleep(min(2.0**attempt, 30.0))
        raise IntakeGaveUp(
            f"{self.source}: the intake of {path.name} failed {INTAKE_ATTEMPTS} times: {problem}"
        )

    def _rules(
        self, by_name: dict[str, str], *, pending: bool = False
    ) -> tuple[int, list[FaultRule]]:
        """Declared faults (document patterns resolved to uuids), then the latency rules.

        `pending`: before intake; a rule for some documents matches none yet.
        """
        rules: list[FaultRule] = []
        for index, fault in enumerate(self.scenario.faults):
            documents: tuple[str, ...] = ()
            if fault.documents and pending:
                documents = ("(not submitted yet)",)
            elif fault.documents:
                documents = tuple(u for n, u in by_name.items() if matches(n, fault.documents))
                if not documents:
                    raise ScenarioError(
                        f"{self.source}: faults[{index}].documents: {fault.documents} "
                        "matches no submitted document"
                    )
            rules.append(
                FaultRule(
                    port=fault.port,
                    kind=fault.kind,
                    operation=fault.operation,
                    first=fault.first,
                    every=fault.every,
                    probability=fault.probability,
                    window=fault.window,
                    documents=documents,
                    latency_s=fault.latency_s,
                    retry_after_s=fault.retry_after_s,
                    message=fault.message,
                )
            )
        declared = len(rules)
        for port, latency in sorted(self.scenario.latency.items()):
            low = latency.fixed_s if latency.fixed_s is not None else latency.min_s
            rules.append(
                FaultRule(
                    port=port,
                    kind="latency",
                    latency_s=low or 0.0,
                    latency_max_s=latency.max_s,
                )
            )
        return declared, rules

    def dispatch(self, services: Services, document_uuid: str) -> None:
        """Send a claimed document's first task (the sim mode queues it in its scheduler)."""
        dispatch(services, document_uuid)

    def send_stage(self, stage: Stage, document_uuid: str, version: int) -> None:
        from pipeline.runtime.tasks import send_stage

        send_stage(stage, document_uuid, version)

    def _act(self, services: Services, action: Any, by_name: dict[str, str]) -> None:
        if action.redeliver is not None:
            for name, document_uuid in by_name.items():
                if not matches(name, action.redeliver.documents):
                    continue
                version = services.store.get_document(document_uuid).processing_version
                for stage in action.redeliver.stages:
                    self.send_stage(stage, document_uuid, version)
        elif action.reprocess is not None:
            for name, document_uuid in by_name.items():
                if not matches(name, action.reprocess.documents):
                    continue
                services.store.force_status(
                    document_uuid, Status.PENDING, stage="reprocess", bump_version=True
                )
                services.store.enqueue(document_uuid)
                claim_own(services, document_uuid, worker=f"scenario-{self.scenario.name}")
                self.dispatch(services, document_uuid)

    # --- expectations ---------------------------------------------------------------
    def _expectations(self) -> list[Check]:
        expect = self.scenario.expect
        outcomes = self.report.documents
        checks: list[Check] = []
        for index, item in enumerate(expect.documents):
            selected = [o for o in outcomes if matches(o.name, item.match)]
            label = f"documents[{index}] {item.match!r}"
            if not selected:
                checks.append(
                    Check("expectation", label, False, "at least one matching document", "none")
                )
                continue
            if item.status is not None:
                wanted = item.status if isinstance(item.status, list) else [item.status]
                bad = [f"{o.name}={o.status}" for o in selected if o.status not in wanted]
                checks.append(
                    Check(
                        "expectation",
                        f"{label} status",
                        not bad,
                        " or ".join(wanted),
                        ", ".join(bad) or _summary(Counter(o.status for o in selected)),
                    )
                )
            if item.error_contains is not None:
                bad = [
                    f"{o.name}: {o.error!r}"
                    for o in selected
                    if item.error_contains.lower() not in (o.error or "").lower()
                ]
                checks.append(
                    Check(
                        "expectation",
                        f"{label} error",
                        not bad,
                        f"error contains {item.error_contains!r}",
                        "; ".join(bad) or "all do",
                    )
                )
            for attribute in ("chunks", "mentions", "entities", "relationships"):
                count: Count | None = getattr(item, attribute)
                if count is not None:
                    checks.append(
                        _per_document(label, attribute, as_bound(count), selected, attribute)
                    )
            if item.processing_version is not None:
                checks.append(
                    _per_document(
                        label,
                        "processing_version",
                        as_bound(item.processing_version),
                        selected,
                        "processing_version",
                    )
                )
        if expect.totals is not None:
            checks.extend(_totals(expect.totals, outcomes))
        for name, count in expect.calls.items():
            measured = self.report.calls.get(name, 0)
            bound = as_bound(count)
            checks.append(
                Check(
                    "expectation",
                    f"calls {name}",
                    bound.holds(measured),
                    bound.describe(),
                    str(measured),
                )
            )
        if expect.dead_letters is not None:
            checks.extend(_dead_letter_checks(expect.dead_letters, self.report.dead_letters))
        return checks


def _summary(counter: Counter[str]) -> str:
    return ", ".join(f"{count} {key}" for key, count in sorted(counter.items()))


def _per_document(
    label: str, what: str, bound: Bound, selected: Sequence[DocumentOutcome], attribute: str
) -> Check:
    values = {o.name: int(getattr(o, attribute)) for o in selected}
    bad = [f"{name}={value}" for name, value in values.items() if not bound.holds(value)]
    measured = ", ".join(bad) if bad else _range(list(values.values()))
    return Check("expectation", f"{label} {what}", not bad, f"each {bound.describe()}", measured)


def _range(values: list[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}..{high}"


def _totals(totals: Any, outcomes: Sequence[DocumentOutcome]) -> list[Check]:
    statuses = Counter(o.status for o in outcomes)
    measured: dict[str, int] = {
        "documents": len(outcomes),
        "completed": statuses.get("completed", 0),
        "failed": len(outcomes) - statuses.get("completed", 0),
        "chunks": sum(o.chunks for o in outcomes),
        "mentions": sum(o.mentions for o in outcomes),
        "entities": sum(o.entities for o in outcomes),
        "relationships": sum(o.relationships for o in outcomes),
    }
    checks = []
    for name, value in measured.items():
        count: Count | None = getattr(totals, name)
        if count is not None:
            bound = as_bound(count)
            checks.append(
                Check(
                    "expectation",
                    f"totals {name}",
                    bound.holds(value),
                    bound.describe(),
                    str(value),
                )
            )
    for status, count in (totals.by_status or {}).items():
        bound = as_bound(count)
        value = statuses.get(str(status), 0)
        checks.append(
            Check(
                "expectation",
                f"totals by_status {status}",
                bound.holds(value),
                bound.describe(),
                str(value),
            )
        )
    return checks


def _dead_letter_checks(spec: Any, letters: list[dict[str, Any]]) -> list[Check]:
    checks = []
    if spec.count is not None:
        bound = as_bound(spec.count)
        checks.append(
            Check(
                "expectation",
                "dead_letters count",
                bound.holds(len(letters)),
                bound.describe(),
                str(len(letters)),
            )
        )
    if spec.documents is not None:
        names = sorted({str(letter["name"]) for letter in letters})
        stray = [n for n in names if not matches(n, spec.documents)]
        missing = [p for p in spec.documents if not any(matches(n, p) for n in names)]
        checks.append(
            Check(
                "expectation",
                "dead_letters documents",
                not stray and not missing,
                f"exactly the documents matching {spec.documents}",
                ", ".join(names) or "none",
            )
        )
    if spec.stages is not None:
        stages = sorted({str(letter["stage"]) for letter in letters})
        wanted = sorted(str(s) for s in spec.stages)
        checks.append(
            Check(
                "expectation",
                "dead_letters stages",
                bool(letters) and set(stages) <= set(wanted),
                ", ".join(wanted),
                ", ".join(stages) or "none",
            )
        )
    if spec.error_contains is not None:
        bad = [str(x["error"]) for x in letters if spec.error_contains not in str(x["error"])]
        checks.append(
            Check(
                "expectation",
                "dead_letters error",
                bool(letters) and not bad,
                f"error contains {spec.error_contains!r}",
                "; ".join(bad) or ("all do" if letters else "no dead letters"),
            )
        )
    return checks


# --- measurements and invariants ----------------------------------------------------------


def _outcome(services: Services, name: str, document_uuid: str) -> DocumentOutcome:
    document = services.store.get_document(document_uuid)
    counts = services.store.counts(document_uuid)
    return DocumentOutcome(
        name=name,
        document_uuid=document_uuid,
        status=str(document.status),
        error=document.error_message,
        chunks=counts.chunks,
        mentions=counts.mentions,
        entities=counts.canonical_entities,
        relationships=counts.relationships,
        processing_version=document.processing_version,
    )


def _duplicates(values: Sequence[object]) -> int:
    return len(values) - len(set(values))


def _invariants(
    services: Services, outcomes: Sequence[DocumentOutcome], fired: list[int], scenario: Scenario
) -> list[Check]:
    store = services.store
    checks = []
    lost = [f"{o.name} ({o.status})" for o in outcomes if not Status(o.status).is_terminal]
    checks.append(
        Check(
            "invariant",
            "no lost document",
            not lost,
            "every submitted document terminal",
            ", ".join(lost) or f"{len(outcomes)}/{len(outcomes)} terminal",
        )
    )
    duplicated: list[str] = []
    for o in outcomes:
        u = o.document_uuid
        chunks = store.get_chunks(u)
        found = {
            "chunk ids": _duplicates([c.uuid for c in chunks]),
            "chunk indexes": _duplicates([c.chunk_index for c in chunks]),
            "mention ids": _duplicates([m.uuid for m in store.get_mentions(u)]),
            "entity ids": _duplicates([e.uuid for e in store.get_canonical_entities(u)]),
            "relationships": _duplicates(
                [(r.from_id, r.to_id, r.relationship_type) for r in store.get_relationships(u)]
            ),
            "history transitions": _duplicates(
                [(h.processing_version, h.status) for h in store.history(u)]
            ),
        }
        duplicated.extend(f"{o.name}: {n} {what}" for what, n in found.items() if n)
    checks.append(
        Check(
            "invariant",
            "no duplicated side effect",
            not duplicated,
            "each chunk, mention, entity, relationship and transition once",
            "; ".join(duplicated) or "none duplicated",
        )
    )
    open_rows = [
        f"{o.name} ({entry.status})"
        for o in outcomes
        if Status(o.status).is_terminal
        for entry in store.queue_entries(o.document_uuid)
        if entry.status in (QueueStatus.PENDING, QueueStatus.PROCESSING)
    ]
    checks.append(
        Check(
            "invariant",
            "nothing stuck",
            not open_rows,
            "no open queue row for a finished document",
            ", ".join(open_rows) or "none open",
        )
    )
    broken = [
        f"{o.name}: {problem}"
        for o in outcomes
        if o.status == Status.COMPLETED.value
        for problem in integrity_problems(store, o.document_uuid)
    ]
    checks.append(
        Check(
            "invariant",
            "referential integrity",
            not broken,
            "completed documents: mentions linked to their own entities, chunk offsets on the "
            "text, relationships between existing nodes, one processing version",
            "; ".join(broken) or "intact",
        )
    )
    unexplained = [
        f"{o.name} ({o.status})"
        for o in outcomes
        if Status(o.status).is_terminal
        and o.status != Status.COMPLETED.value
        and not (o.error or "").strip()
    ]
    checks.append(
        Check(
            "invariant",
            "every failure has a reason",
            not unexplained,
            "every document that did not complete has an error message",
            ", ".join(unexplained) or "all have one",
        )
    )
    lettered: dict[str, list[str]] = {}
    for letter in store.dead_letters():
        lettered.setdefault(str(letter["document_uuid"]), []).append(str(letter["stage"]))
    mismatched = [
        f"{o.name} ({o.status}): "
        + (
            f"dead letter at {', '.join(lettered[o.document_uuid])}"
            if o.document_uuid in lettered
            else "no dead letter"
        )
        for o in outcomes
        if (o.status == Status.DEAD_LETTERED.value) != (o.document_uuid in lettered)
    ]
    checks.append(
        Check(
            "invariant",
            "dead letters match",
            not mismatched,
            "a dead letter for each dead-lettered document, none beside any other",
            "; ".join(mismatched) or "all match",
        )
    )
    uncovered = []
    for index, (fault, count) in enumerate(zip(scenario.faults, fired, strict=True)):
        bound = as_bound(fault.fired) if fault.fired is not None else Bound(min=1)
        if not bound.holds(count):
            uncovered.append(f"faults[{index}] {fault.kind} on {fault.port}: fired {count}")
    checks.append(
        Check(
            "invariant",
            "fault coverage",
            not uncovered,
            "every declared fault fired (within its bounds)",
            "; ".join(uncovered) or f"{len(fired)} fault(s) fired: {fired}",
        )
    )
    return checks


# --- the two modes -----------------------------------------------------------------------


def _in_process_settings(workdir: Path, redis_name: str, values: dict[str, Any]) -> Settings:
    """Eager and sim runs: SQLite, blobs and a fakeredis server of the run's own.

    The sim-cloud profile brings its own blob_url (s3://); where state lives stays local.
    """
    local: dict[str, Any] = {
        "database_url": f"sqlite:///{workdir / 'docpipe.db'}",
        "blob_url": f"file://{workdir / 'blobs'}",
        "redis_url": f"fakeredis://{redis_name}",
        "broker_url": "memory://",
    }
    return settings_over_environment(local | values | {"eager": True})


class EagerRun(_Run):
    mode = "eager"

    def start(self, values: dict[str, Any]) -> Services:
        from pipeline.harness.simulation.faultboard import FaultBoard

        self._redis_name = f"scenario-{uuid.uuid4().hex}"
        settings = _in_process_settings(self.workdir, self._redis_name, values)
        # One process, as in sim mode: the fault rules and counters in a dict. Through the
        # run's fakeredis every port call was a GET and an INCR or two over a simulated
        # socket, four in five of an eager run's Redis commands.
        self.fault_board = FaultBoard()
        clock = SystemClock()
        faults = (
            SharedFaultInjector(self.fault_board.as_redis(), clock=clock)
            if settings.fault_injection
            else None
        )
        services = start(settings, faults=faults, clock=clock)
        self._services: Services | None = services
        return services

    def fault_state(self, services: Services) -> redis.Redis:
        """The run's fault board (pipeline.harness.simulation.faultboard): no other process."""
        return self.fault_board.as_redis()

    def wait(self, services: Services, uuids: list[str]) -> None:
        """Eager tasks ran inline; nothing to wait for."""

    def stop(self) -> None:
        services = getattr(self, "_services", None)
        use_services(None)
        if services is not None:
            services.redis.flushall()
            services.close()
            discard_fake_redis_server(services.settings.redis_url)


def needs_postgres(scenario: Scenario) -> bool:
    return any(d.kind == "database_unreachable" for d in scenario.disruptions)


def postgres_admin_url() -> str | None:
    """Where broker runs that cut the database off create their throw-away database."""
    from pipeline.settings import get_settings

    return get_settings().scenario_postgres_url


def rabbitmq_admin_url() -> str:
    """Where broker runs on RabbitMQ create their throw-away vhost."""
    from pipeline.settings import get_settings

    return get_settings().scenario_rabbitmq_url


def sim_cloud_missing() -> str | None:
    """Why the sim-cloud profile cannot run here (its extra is not installed), or None."""
    return missing_extra_reason("harness", HARNESS_MODULES["sim-cloud"], "the sim-cloud profile")


def sim_skip_reason(scenario: Scenario) -> str | None:
    """Why a scenario is not meaningful in sim mode, or None.

    Sim mode runs what eager mode runs (same services, in process) under the
    virtual-time scheduler; it needs the in-process fakes, not the moto cloud.
    A broker-only scenario runs too when what makes it broker-only is
    something the scheduler models: a `kill_worker` fault (it loses the task
    and redelivers it, as reject-on-worker-lost does) or a call that outlives
    the visibility timeout (a wall-clock wait in eager mode, virtual here).
    Disruptions and missing consumers it cannot.
    """
    needs_processes = (
        scenario.disruptions
        or scenario.broker.omit_queues
        or scenario.expect.preflight_error is not None
    )
    if "eager" not in scenario.modes and needs_processes:
        return (
            f"declares modes: [{', '.join(scenario.modes)}] (sim runs eager scenarios and "
            "broker ones without disruptions or missing consumers)"
        )
    if "eager" not in scenario.modes and "redis" not in scenario.broker.brokers:
        only = scenario.broker.only_because or f"brokers: [{', '.join(scenario.broker.brokers)}]"
        return f"the simulator models Celery on Redis; this scenario is not for Redis ({only})"
    kinds = sorted(
        f"{f.kind} on {f.port}"
        for f in scenario.faults
        if "sim" not in fault_modes(f.port, f.operation, f.kind)
    )
    if kinds:
        return f"fault kind(s) {kinds} need real worker processes"
    if scenario.adapters.profile == "sim-cloud":
        return "the sim-cloud profile runs real SDK clients on the wall clock"
    return None


class SimRun(EagerRun):
    """The eager services on a virtual clock, driven by the discrete-event scheduler.

    Layout: one worker per queue (ocr x1, text x4, entity x4, graph x4),
    prefetch 1, the scenario's visibility timeout. Stage code runs as in
    eager mode; the broker's delivery semantics come from the scheduler.
    """

    mode = "sim"

    def start(self, values: dict[str, Any]) -> Services:
        from pipeline.harness.simulation.engine import SimConfig, SimulatedWorker, Simulator
        from pipeline.harness.simulation.real import StageExecutor

        self._redis_name = f"scenario-{uuid.uuid4().hex}"
        if self.in_memory:
            values = values | {"database_url": "sqlite://", "blob_url": "memory://"}
        settings = _in_process_settings(self.workdir, self._redis_name, values)
        self.executor = StageExecutor([], settings, seed=self.seed)
        self.fault_board = self.executor.fault_board
        services = self.executor.services
        celery_app.configure(settings)
        use_services(services)
        self._services = services
        layout = [
            SimulatedWorker("ocr", 1, name="ocr-0"),
            SimulatedWorker("text", 4, name="text-0"),
            SimulatedWorker("entity", 4, name="entity-0"),
            SimulatedWorker("graph", 4, name="graph-0"),
        ]
        config = SimConfig(
            layout, visibility_timeout_s=settings.visibility_timeout_s, max_events=SIM_MAX_EVENTS
        )
        self.simulator = Simulator(config, self.executor)
        self._indices: dict[str, int] = {}
        self._names: dict[str, str] = {}
        self._queued: list[int] = []
        return services

    def _index(self, document_uuid: str) -> int:
        index = self._indices.setdefault(document_uuid, len(self._indices))
        self.executor.adopt(index, document_uuid)
        return index

    def dispatch(self, services: Services, document_uuid: str) -> None:
        self._names.setdefault(
            document_uuid, str(services.store.get_document(document_uuid).original_file_name)
        )
        self._queued.append(self._index(document_uuid))

    def send_stage(self, stage: Stage, document_uuid: str, version: int) -> None:
        from pipeline.harness.simulation.engine import Send
        from pipeline.harness.simulation.model import START_OCR

        task = START_OCR if stage is Stage.OCR else str(stage)
        self.simulator.publish(Send(task=task, queue=stage.queue, doc=self._index(document_uuid)))

    def extra_checks(self, services: Services) -> list[Check]:
        from pipeline.harness.simulation.budget import retry_budget_problems

        problems = retry_budget_problems(self.executor.attempts, services.settings)
        names = {index: self._names.get(uuid_, uuid_) for uuid_, index in self._indices.items()}
        shown = [problem.describe(names) for problem in problems]
        settings = services.settings
        return [
            Check(
                "invariant",
                "retry budget",
                not problems,
                f"a dead letter only after {settings.max_retries + 1} attempts in a row without "
                f"progress or {settings.max_task_attempts} in all; never more",
                "; ".join(shown[:3]) + (" ..." if len(shown) > 3 else "")
                if shown
                else f"{len(self.executor.attempts)} attempts within the budget",
            )
        ]

    def wait(self, services: Services, uuids: list[str]) -> None:
        from pipeline.harness.simulation.engine import SimulationDidNotEnd

        queued, self._queued = self._queued, []
        try:
            result = self.simulator.run(queued)
        except SimulationDidNotEnd as exc:
            self.report.sim = {
                "never_ended": {
                    "virtual_seconds": round(exc.at, 3),
                    "in_flight": exc.in_flight,
                    "in_flight_halfway": exc.in_flight_halfway,
                    "most_of_one_task": exc.most_of_one_task,
                    "documents": exc.documents,
                }
            }
            raise ScenarioError(f"{NEVER_ENDED}: {exc}") from None
        self.report.sim = {
            "virtual_seconds": round(result.end_time, 3),
            "events": result.events,
            "counts": dict(sorted(result.counts.items())),
        }


class BrokerRun(_Run):
    mode = "broker"

    def start(self, values: dict[str, Any]) -> Services:
        from pipeline.harness.localstack import WorkersNotReady, settings_env
        from pipeline.harness.scenarios.hosts import SeparateHosts, SharedStorageError
        from pipeline.harness.scenarios.real_workers import (
            PORT_QUEUES,
            BrokerEnvironment,
            worker_layout,
        )

        env = settings_env(values)
        restarts = any(d.kind == "restart_redis" for d in self.scenario.disruptions)
        separate = not self.report.shared_filesystem
        self.environment = BrokerEnvironment(
            self.workdir,
            env,
            persistent=restarts,
            postgres_admin_url=(
                postgres_admin_url() if needs_postgres(self.scenario) or separate else None
            ),
            hosts=SeparateHosts(self.scenario.name) if separate else None,
            broker=self.broker,
            rabbitmq_admin_url=rabbitmq_admin_url(),
        )
        try:
            self.environment.start_database()
            self.environment.start_rabbitmq()
        except ConfigurationError as exc:
            raise ScenarioError(f"{self.source}: broker mode: {exc}") from exc
        self.environment.start_redis()
        settings = Settings(_env_file=None, **self.environment.settings_values())  # type: ignore[call-arg]
        kill_queues = {
            queue
            for f in self.scenario.faults
            if f.kind in PROCESS_KILLING_KINDS
            # A port every stage uses (store, locks, ...) can kill a worker of any queue.
            for queue in ([PORT_QUEUES[f.port]] if f.port in PORT_QUEUES else QUEUES)
        }
        omit = self.scenario.broker.omit_queues
        # Services first: they create the schema, which workers starting together would race on.
        # A kill fault met at intake must not kill the runner: it raises WorkerKilled here.
        services = start(
            settings, faults=SharedFaultInjector(redis_client(settings.redis_url), simulated=True)
        )
        app = celery_app.app
        try:
            workers = self.environment.start_workers(worker_layout(kill_queues, omit))
        except SharedStorageError as exc:
            raise ScenarioError(f"{self.source}: broker mode: {exc}") from exc
        self._services: Services | None = services
        self._disruptions = self._disruption_thread(services)
        served = {q for q in QUEUES if q not in omit}
        # One answer in which every served queue has a consumer; what is still idle then
        # is a queue nobody consumes (a slow reply would make every queue look idle).
        try:
            idle = workers.wait_for_consumers(
                app, QUEUES, timeout_s=WORKERS_READY_TIMEOUT_S, required=served
            )
        except WorkersNotReady as exc:
            raise ScenarioError(
                f"{self.source}: broker mode: the workers did not come up within "
                f"{WORKERS_READY_TIMEOUT_S:g} s "
                f"(worker logs in {self.workdir})"
            ) from exc
        self._host_checks = self._separate_host_processes()
        expected = self.scenario.expect.preflight_error
        if idle:
            message = (
                f"no worker consumes queue(s) {', '.join(idle)}: tasks sent there would stay "
                "PENDING forever"
            )
            self.report.checks.append(
                Check(
                    "expectation",
                    "preflight_error",
                    expected is not None and expected.lower() in message.lower(),
                    f"refused up front, mentioning {expected!r}" if expected else "no error",
                    message,
                )
            )
            raise _Preflight()
        if expected is not None:
            self.report.checks.append(
                Check(
                    "expectation",
                    "preflight_error",
                    False,
                    f"refused up front, mentioning {expected!r}",
                    "every queue has a consumer",
                )
            )
            raise _Preflight()
        return services

    def run(self) -> None:
        with suppress(_Preflight):
            super().run()

    def shared_services(self, stack: ExitStack, values: dict[str, Any]) -> dict[str, Any]:
        """Separate hosts share no folder: blobs go to S3 (moto), unless the profile did that."""
        if self.report.shared_filesystem or str(values.get("blob_url", "")).startswith("s3://"):
            return {}
        from pipeline.harness.scenarios.cloud import s3_blobs

        settings: dict[str, Any] = stack.enter_context(s3_blobs(self.scenario.name))
        return settings

    def _separate_host_processes(self) -> list[Check]:
        """What the running workers really have, read from /proc: their cwd and environment."""
        from pipeline.harness.scenarios.hosts import environment_problems, working_directory

        hosts, workers = self.environment.hosts, self.environment.workers
        if hosts is None or workers is None:
            return []
        misplaced, problems = [], []
        for process, host in zip(workers.processes, hosts.hosts, strict=True):
            cwd = working_directory(process.pid)
            if cwd is None or cwd != host.root.resolve() or cwd.is_relative_to(self.workdir):
                misplaced.append(f"{host.name} works in {cwd}")
            try:
                raw = Path(f"/proc/{process.pid}/environ").read_bytes()
            except OSError as exc:
                problems.append(f"{host.name}: environment unreadable ({exc.strerror})")
                continue
            pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
            env = {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}
            problems.extend(f"{host.name}: {p}" for p in environment_problems(env, self.workdir))
            if env.get("HOME") != str(host.home) or env.get("TMPDIR") != str(host.tmp):
                problems.append(f"{host.name}: HOME or TMPDIR is not its own folder")
        count = len(hosts.hosts)
        return [
            Check(
                "invariant",
                "separate hosts: working folders",
                not misplaced,
                "each worker in a folder of its own, outside the run folder",
                "; ".join(misplaced) or f"{count} worker(s), each in its own folder",
            ),
            Check(
                "invariant",
                "separate hosts: environment",
                not problems,
                "no file:// or sqlite URL, no run-folder path; own HOME and TMPDIR",
                "; ".join(problems) or f"{count} worker environment(s) clean",
            ),
        ]

    def _separate_host_storage(self, services: Services) -> list[Check]:
        """After the run: every stored file on S3, none in a worker's folder."""
        from pipeline.adapters.s3_blob import S3BlobStore
        from pipeline.domain.models import INTAKE_PDF_PAGES

        hosts = self.environment.hosts
        if hosts is None:
            return []
        uploaded, missing = 0, []
        for outcome in self.report.documents:
            document = services.store.get_document(outcome.document_uuid)
            refused = document.size_bytes > services.settings.max_file_bytes or (
                INTAKE_PDF_PAGES in document.ocr_metadata
            )
            if refused:
                continue  # over a limit: recorded at intake, never stored
            try:
                stored = services.blobs.size(document.storage_key)
            except Exception as exc:  # missing (KeyError) or unreachable: either way not there
                missing.append(f"{outcome.name} ({type(exc).__name__})")
                continue
            if stored == document.size_bytes:
                uploaded += 1
            else:
                missing.append(f"{outcome.name} ({stored} of {document.size_bytes} bytes)")
        on_s3 = isinstance(services.blobs, S3BlobStore)
        inbox = [p for p in (self.workdir / "inbox").rglob("*") if p.is_file()]
        leaked = hosts.leaked(inbox)
        return [
            Check(
                "invariant",
                "separate hosts: stored files on S3",
                on_s3 and not missing,
                "every stored file in the S3 bucket, where every host reaches it",
                _stored_files(services, on_s3, uploaded, missing),
            ),
            Check(
                "invariant",
                "separate hosts: nothing stored in a worker's folder",
                not leaked,
                "no stored document and no docpipe database in any worker's folder",
                "; ".join(leaked) or f"{len(hosts.files())} file(s) in worker folders, none",
            ),
        ]

    def _disruption_thread(self, services: Services) -> Any:
        from pipeline.harness.scenarios.disruptions import DisruptionThread

        def in_flight() -> int:
            uuids = list(getattr(self, "_dispatched", []))
            return sum(1 for s in services.store.statuses(uuids).values() if not s.is_terminal)

        return DisruptionThread(
            self.scenario.disruptions,
            redis_server=self.environment._redis,
            database_proxy=self.environment._proxy,
            in_flight=in_flight,
        )

    def dispatch(self, services: Services, document_uuid: str) -> None:
        """Send the first task; the first dispatch starts the disruption clock."""
        self._dispatched: list[str] = [*getattr(self, "_dispatched", []), document_uuid]
        super().dispatch(services, document_uuid)
        self._disruptions.start()

    def _disruption_checks(self) -> list[Check]:
        self._disruptions.join()
        checks = []
        for index, applied in enumerate(self._disruptions.applied):
            problem = applied.error
            if problem is None and not applied.in_flight:
                problem = "hit no document in flight (it came too late)"
            measured = f"{applied.in_flight} document(s) in flight, lasted {applied.lasted_s} s"
            if applied.effect:
                measured += f"; {applied.effect}"
            checks.append(
                Check(
                    "invariant",
                    f"disruptions[{index}] coverage",
                    problem is None,
                    f"{applied.describe()} hit documents in flight and was restored",
                    problem if problem is not None else measured,
                )
            )
        return checks

    def wait(self, services: Services, uuids: list[str]) -> None:
        from pipeline.runtime.broker import wait_for_terminal

        on_progress = (
            self._queue_processor(services)
            if self.scenario.broker.queue_processor
            else lambda _done: None
        )
        wait_for_terminal(
            services, uuids, timeout_s=self.scenario.broker.timeout_s, on_progress=on_progress
        )
        # A document can look finished while an overtaken delivery of one of its stages
        # still runs (a call stalled past the visibility timeout): judge the rows only
        # once no task runs, so its late writes - or their refusal - are in them.
        self._wait_until_idle(timeout_s=self.scenario.broker.timeout_s)

    def _wait_until_idle(self, timeout_s: float) -> None:
        """Until no worker runs a task (Celery's `inspect active`), at most `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        started = self.environment.workers
        workers = len(started.processes) if started is not None else None
        busy: list[str] = []
        while time.monotonic() < deadline:
            try:
                # A connection of its own: a pooled one may predate a Redis restart.
                with celery_app.app.connection_for_write() as connection:
                    # Complete once each worker we started answered (a scenario restarts
                    # none): no full second of waiting for replies that cannot come.
                    inspect = celery_app.app.control.inspect(
                        timeout=1.0, connection=connection, limit=workers
                    )
                    active = inspect.active() or {}
            except (OSError, redis.RedisError, kombu.exceptions.OperationalError) as exc:
                log.info("inspect active: %s; asking again", exc)
                time.sleep(0.5)
                continue
            busy = [f"{task['name']}[{task['id']}]" for tasks in active.values() for task in tasks]
            if not busy:
                return
            time.sleep(0.5)
        self.report.checks.append(
            Check(
                "invariant",
                "workers idle",
                False,
                f"no task running {timeout_s:g}s after every document was terminal",
                ", ".join(busy),
            )
        )

    def _queue_processor(self, services: Services) -> Callable[[int], None]:
        """A queue-processor cycle (what `docpipe queue-processor` runs) about once a second."""
        from pipeline.app.queue_processor import process_queue_batch

        names = {d.uuid: d.original_file_name for d in services.store.list_documents()}
        last = 0.0

        def cycle(_done: int) -> None:
            nonlocal last
            if time.monotonic() - last < 1.0:
                return
            last = time.monotonic()
            try:
                outcome = process_queue_batch(services, "scenario-queue-processor", batch=100)
            except Exception as exc:  # its database or broker is down: the next cycle retries
                log.warning("scenario queue processor: %s", exc)
                return
            for document_uuid, stage in outcome.resumed.items():
                self.report.resumed[names.get(document_uuid, document_uuid)] = stage

        return cycle

    def extra_checks(self, services: Services) -> list[Check]:
        disrupted = self._disruption_checks()
        deadline = time.monotonic() + 5
        lengths = self.environment.queue_lengths()
        while any(lengths.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
            lengths = self.environment.queue_lengths()
        waiting = {q: n for q, n in lengths.items() if n}
        return [
            *disrupted,
            *getattr(self, "_host_checks", []),
            *self._separate_host_storage(services),
            Check(
                "invariant",
                "no message left in a queue",
                not waiting,
                "every broker queue empty",
                ", ".join(f"{q}: {n}" for q, n in waiting.items()) or "all empty",
            ),
        ]

    def stop(self) -> None:
        from kombu import pools

        disruptions = getattr(self, "_disruptions", None)
        if disruptions is not None:
            disruptions.join(cancel=True)
        use_services(None)
        # The next run may use another broker (or eager mode): no pooled connection survives.
        celery_app.drop_broker_connections()
        pools.reset()
        services = getattr(self, "_services", None)
        if services is not None:
            services.close()
        environment = getattr(self, "environment", None)
        if environment is None:
            return
        if self.stop_in_background:
            from pipeline.harness.scenarios.real_workers import background_stops

            background_stops.start(self.scenario.name, environment.stop)
        else:
            environment.stop()


def _stored_files(services: Services, on_s3: bool, uploaded: int, missing: list[str]) -> str:
    if not on_s3:
        return f"blobs in {type(services.blobs).__name__}, not on S3"
    text = f"{redact_url(services.settings.blob_url)}: {uploaded} stored file(s)"
    return text + (f"; missing: {', '.join(missing)}" if missing else "")


class _Preflight(Exception):
    """Broker mode stopped before submitting (its outcome is already a check)."""


# --- parity -------------------------------------------------------------------------------


def parity(eager: RunReport, broker: RunReport) -> list[str]:
    """Where two modes' outcomes differ (empty: they agree); labelled by each report's mode."""
    if eager.skipped or broker.skipped:
        return []
    first, second = eager.label, broker.label
    differences = []
    keyed_e = {d.name: d for d in eager.documents}
    keyed_b = {d.name: d for d in broker.documents}
    fields = ("status", "chunks", "mentions", "entities", "relationships", "processing_version")
    for name in sorted(set(keyed_e) | set(keyed_b)):
        e, b = keyed_e.get(name), keyed_b.get(name)
        if e is None or b is None:
            differences.append(f"{name}: only in {second if e is None else first}")
            continue
        for attribute in fields:
            if getattr(e, attribute) != getattr(b, attribute):
                differences.append(
                    f"{name} {attribute}: {first} {getattr(e, attribute)}, "
                    f"{second} {getattr(b, attribute)}"
                )
    checks_e = {(c.kind, c.name): c.passed for c in eager.checks}
    for check in broker.checks:
        key = (check.kind, check.name)
        if key in checks_e and checks_e[key] != check.passed:
            differences.append(
                f"{check.kind} {check.name!r}: {first} {'pass' if checks_e[key] else 'FAIL'}, "
                f"{second} {'pass' if check.passed else 'FAIL'}"
            )
    return differences


def run_many(
    items: Sequence[tuple[Scenario, Path | None]],
    modes: Sequence[Mode],
    *,
    seed: int | None = None,
    on_report: Callable[[RunReport], None] = lambda report: None,
    keep: Path | None = None,
    brokers: Sequence[BrokerName] = ("redis",),
    shared_filesystem: bool | None = None,
) -> list[RunReport]:
    """Each scenario in each mode (broker mode once per broker); `keep` keeps run folders.

    `shared_filesystem=False`: broker-mode workers as separate hosts (None: each scenario's
    `deployment`)."""
    reports = []
    for scenario, path in items:
        for mode in modes:
            for broker in brokers if mode == "broker" else ("redis",):
                label = f"{mode}-{broker}" if mode == "broker" and len(brokers) > 1 else mode
                workdir = None if keep is None else kept_run_folder(keep, scenario.name, label)
                try:
                    report = run_scenario(
                        scenario,
                        path,
                        mode,
                        seed=seed,
                        workdir=workdir,
                        broker=broker,
                        shared_filesystem=shared_filesystem,
                    )
                except ConfigurationError as exc:
                    s = scenario.seed if seed is None else seed
                    shared = scenario.deployment.shared_filesystem
                    if shared_filesystem is not None:
                        shared = shared_filesystem
                    replay = replay_command(
                        path, mode, s, broker, shared_filesystem=shared or mode != "broker"
                    )
                    report = RunReport(scenario.name, str(path), mode, s, False, 0.0, replay)
                    report.broker = broker if mode == "broker" else None
                    report.shared_filesystem = shared or mode != "broker"
                    report.error = str(exc)
                on_report(report)
                reports.append(report)
    return reports
