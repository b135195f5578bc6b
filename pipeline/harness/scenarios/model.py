"""The scenario file format: a pydantic model, strict (unknown keys are errors).

A scenario is a reproducible experiment and a bug report at once: documents,
settings, per-service latency, faults and the expectations that must hold.
`scenarios/schema.json` is `scenario_json_schema()`; `scenarios/README.md`
documents every key.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any, Literal, Optional, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from fakes.faults import FaultKind as FaultKind
from pipeline.domain.models import Stage, Status
from pipeline.settings import Settings

Mode = Literal["eager", "broker", "sim"]
ALL_MODES: tuple[Mode, ...] = ("eager", "broker")
#: Every port (and process-level target) a fault can hit; see FAULT_CATALOGUE.
Port = Literal[
    "ocr",
    "parser",
    "llm",
    "blobs",
    "store",
    "graph",
    "cache",
    "locks",
    "state",
    "rate_limiter",
    "dispatcher",
    "intake",
    "worker",
    "redis",
]
DocumentType = Literal["txt", "pdf", "docx", "eml"]

_CALL_KINDS = ("transient", "throttle", "permanent", "timeout", "latency")
_SERVICE_KINDS = (*_CALL_KINDS, "malformed", "empty", "kill_worker")
_INFRA_KINDS = ("transient", "timeout", "latency", "kill_worker", "kill_worker_after")
_STORE_KINDS = (
    "transient",
    "connection_lost",
    "commit_unknown",
    "latency",
    "kill_worker",
    "kill_worker_after",
)

#: THE fault catalogue: port -> operation -> the fault kinds it supports. Everything a
#: scenario's `faults:` can declare, and what `docpipe explore` draws from.
#: Store operations are the store's roles (pipeline/ports DocumentStore methods grouped
#: in fakes/faulty_ports.py STORE_ROLES). `worker`, `redis` are process-level events of
#: the simulated deployment; `intake.submit` is the scenario runner's submission.
FAULT_CATALOGUE: dict[str, dict[str, tuple[str, ...]]] = {
    "ocr": {"start": _SERVICE_KINDS, "poll": _SERVICE_KINDS},
    "parser": {"extract": (*_SERVICE_KINDS, "hang")},
    "llm": {"extract": _SERVICE_KINDS},
    "blobs": {"put": _INFRA_KINDS, "get": _INFRA_KINDS},
    "store": {
        "documents": _STORE_KINDS,
        "derived": _STORE_KINDS,
        "queue": _STORE_KINDS,
        "dead_letters": _STORE_KINDS,
    },
    "graph": {"write": (*_INFRA_KINDS, "commit_unknown")},
    "cache": {"get": _INFRA_KINDS, "set": _INFRA_KINDS},
    "locks": {"acquire": _INFRA_KINDS, "release": _INFRA_KINDS},
    "state": {"record": _INFRA_KINDS},
    "rate_limiter": {"acquire": _INFRA_KINDS},
    "dispatcher": {
        "send_stage": ("transient", "latency", "duplicate", "stale_version", "kill_worker"),
        # Publishing a task's retry (Celery's Task.retry, not through the Dispatcher port):
        # the broker down past the publish policy.
        "send_retry": ("transient",),
    },
    "intake": {"submit": ("duplicate",)},
    "worker": {
        # At a task's start, before any side effect; after its side effects, before the
        # ack (nothing chained); while it holds a retry's countdown message.
        "start": ("kill_worker", "outlive_visibility"),
        "ack": ("kill_worker",),
        "countdown": ("kill_worker",),
    },
    "redis": {"server": ("restart",)},
}

#: (port, operation, kind) that only the simulator can produce: broker mode refuses them.
#: Everything else is injected by wrappers that read their rules from Redis, so it
#: reaches real worker processes too.
SIM_ONLY_FAULTS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("worker", "start", "kill_worker"),
        ("worker", "start", "outlive_visibility"),
        ("worker", "ack", "kill_worker"),
        ("worker", "countdown", "kill_worker"),
        ("redis", "server", "restart"),
        # Real workers publish retries inside Celery, where no wrapper reaches yet.
        ("dispatcher", "send_retry", "transient"),
    }
)
#: Kinds only real worker processes suffer: a call deaf to the soft time limit is ended by
#: the prefork pool's hard limit, which neither eager mode nor the simulator has.
BROKER_ONLY_KINDS = frozenset({"hang"})
#: Kinds that end the process they fire in: eager mode (the runner's own process) refuses
#: them; the simulator raises WorkerKilled, broker workers are SIGKILLed.
PROCESS_KILLING_KINDS = frozenset({"kill_worker", "kill_worker_after"})


def fault_modes(port: str, operation: str | None, kind: str) -> tuple[Mode, ...]:
    """The run modes that can inject `kind` on `port.operation` (every operation when None)."""
    operations = FAULT_CATALOGUE[port]
    names = [operation] if operation is not None else [o for o in operations]
    names = [o for o in names if kind in operations.get(o, ())]
    if not names:
        return ()
    if kind in BROKER_ONLY_KINDS:
        return ("broker",)
    modes: list[Mode] = ["sim"]
    if all((port, o, kind) not in SIM_ONLY_FAULTS for o in names):
        modes.append("broker")
        if kind not in PROCESS_KILLING_KINDS and port not in ("worker", "redis"):
            modes.append("eager")
    return tuple(sorted(modes))


#: The operations each port consults the fault injector for (from FAULT_CATALOGUE).
PORT_OPERATIONS: dict[str, tuple[str, ...]] = {
    port: tuple(operations) for port, operations in FAULT_CATALOGUE.items()
}
#: Ports whose wrappers tell the injector which document a call is for.
DOCUMENT_AWARE_PORTS = frozenset(
    {"ocr", "parser", "blobs", "store", "graph", "dispatcher", "intake", "worker"}
)

#: Settings the runner owns (where things live, which adapters): a scenario cannot set them.
RUNNER_OWNED_SETTINGS = frozenset(
    {
        "database_url",
        "blob_url",
        "redis_url",
        "broker_url",
        "result_backend",
        "eager",
        "ocr",
        "llm",
        "graph_url",
        "allow_cloud",
        "fault_injection",
        "openai_api_key",
        "openai_model",
        "flower_basic_auth",
        # Where AWS is (the runner points these at its simulator, or leaves them unset).
        "s3_bucket",
        "aws_region",
        "aws_endpoint_url",
        # Where the LLM and the graph are, and their credentials.
        "openai_base_url",
        "neo4j_user",
        "neo4j_password",
        "neo4j_database",
    }
)


class ScenarioError(Exception):
    """A scenario file that cannot be used: the message names file, key path and expectation."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Bound(_Strict):
    """A count within bounds (inclusive); either side may be left open."""

    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self

    def holds(self, value: int) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return str(self.min) if self.min == self.max else f"{self.min}..{self.max}"
        return f">= {self.min}" if self.min is not None else f"<= {self.max}"


#: An exact count, or {min, max}.
Count = int | Bound


def as_bound(count: Count) -> Bound:
    return Bound(min=count, max=count) if isinstance(count, int) else count


#: What a generated file name may look like (the JSON Schema's view of `file_name_problem`).
FILE_NAME_PATTERN = r"^(?!\.\.?$)[^/\\\u0000-\u001f]+$"


def file_name_problem(name: str) -> str | None:
    """Why `name` is not a plain file name inside the run folder; None when it is.

    The runner writes `inbox / name`: an absolute path, `..` or a separator would
    write outside the run folder (or into a folder the run does not own).
    """
    if not name:
        return "must not be empty"
    if name.startswith(("/", "\\")):
        return "must be a file name, not an absolute path"
    if "/" in name or "\\" in name:
        return "must be a file name without '/' or '\\' (files are written into the run folder)"
    if name in {".", ".."}:
        return "must be a file name, not '.' or '..'"
    if any(ord(char) < 0x20 for char in name):
        return "must not contain control characters (newline, tab, NUL...)"
    return None


class Generated(_Strict):
    """Documents made by the runner, deterministically from the seed."""

    type: DocumentType
    #: File name; `{i}` is replaced by 1..count (required when count > 1). A plain
    #: name: no folder, no `..`, not absolute (the file is written into the run folder).
    name: str | None = Field(default=None, json_schema_extra={"pattern": FILE_NAME_PATTERN})
    count: int = Field(default=1, ge=1, le=1000)
    pages: int = Field(default=1, ge=1, le=500)
    #: Pad the file to at least this many bytes (oversized files).
    size: int | None = Field(default=None, ge=1, le=64 * 1024 * 1024)
    #: The text to use (default: legal prose generated from the seed).
    text: str | None = None
    #: valid, or a broken file: empty (0 bytes), truncated (first 40 %), binary (random bytes),
    #: zip_bomb (docx only: word/document.xml repeats one paragraph up to `size` bytes,
    #: default 10 MB, so a file of a few KB expands about 1000x), or scanned (pdf only: the
    #: pages as grey images without a text layer, the first turned 2 degrees; read by
    #: local OCR, the `[ocr]` extra, at ~2-3 s of CPU per page: keep such batches small).
    content: Literal["valid", "empty", "truncated", "binary", "zip_bomb", "scanned"] = "valid"

    @field_validator("name")
    @classmethod
    def _plain_file_name(cls, name: str | None) -> str | None:
        if name is not None:
            problem = file_name_problem(name)
            if problem is not None:
                raise ValueError(problem)
        return name

    @model_validator(mode="after")
    def _zip_bomb_is_a_docx(self) -> Self:
        if self.content == "zip_bomb" and self.type != "docx":
            raise ValueError("content zip_bomb needs type docx (a DOCX is a ZIP archive)")
        if self.content == "scanned" and self.type != "pdf":
            raise ValueError("content scanned needs type pdf (a scan is an image-only PDF)")
        return self

    @model_validator(mode="after")
    def _names(self) -> Self:
        if self.count > 1 and self.name is not None and "{i}" not in self.name:
            raise ValueError("name needs '{i}' when count > 1, or every file gets the same name")
        if self.name is not None:
            # The names the runner will write, each checked too (defence in depth: a
            # format spec decides what the rendered name holds).
            for i in range(1, self.count + 1):
                try:
                    rendered = self.name.format(i=i)
                except (KeyError, IndexError, ValueError, AttributeError) as exc:
                    raise ValueError(
                        f"name is not a valid template ({type(exc).__name__}: {exc}); "
                        "use {i} for the number"
                    ) from None
                problem = file_name_problem(rendered)
                if problem is not None:
                    raise ValueError(f"name renders as {rendered!r}, which {problem}")
        return self


class DocumentSpec(_Strict):
    """Either files from the repository (paths or globs, relative to the scenario file)
    or generated documents."""

    files: list[str] | None = Field(default=None, min_length=1)
    generate: Generated | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.files is None) == (self.generate is None):
            raise ValueError("give exactly one of 'files' or 'generate'")
        return self


class Adapters(_Strict):
    """The adapter profile: the fakes, or the production adapters against simulators."""

    #: `sim-cloud`: S3BlobStore + TextractOcrEngine on moto and the Textract simulator,
    #: OpenAIEntityExtractor on the OpenAI-compatible fake (all on loopback).
    profile: Literal["fakes", "sim-cloud"] = "fakes"
    ocr: Literal["fake"] = "fake"
    llm: Literal["fake"] = "fake"
    #: The poll of the fake Textract job that finishes it (1: the first poll answers).
    ocr_polls_until_done: int = Field(default=1, ge=1, le=50)


class Latency(_Strict):
    """Added latency per call of a service: fixed, or uniform between min_s and max_s (seeded)."""

    fixed_s: float | None = Field(default=None, ge=0, le=60)
    min_s: float | None = Field(default=None, ge=0, le=60)
    max_s: float | None = Field(default=None, ge=0, le=60)

    @model_validator(mode="after")
    def _shape(self) -> Self:
        ranged = self.min_s is not None or self.max_s is not None
        if (self.fixed_s is not None) == ranged:
            raise ValueError("give either fixed_s, or min_s and max_s")
        if ranged and (self.min_s is None or self.max_s is None or self.min_s > self.max_s):
            raise ValueError("min_s and max_s are both needed, with min_s <= max_s")
        return self


class Fault(_Strict):
    """One fault on one port (and operation), on a schedule. Conditions combine (AND)."""

    port: Port
    operation: str | None = None
    kind: FaultKind
    #: Fire on the first N matching calls.
    first: int | None = Field(default=None, ge=1)
    #: Fire on every Nth matching call.
    every: int | None = Field(default=None, ge=1)
    #: Fire with this probability per call (seeded: same seed, same calls).
    probability: float | None = Field(default=None, gt=0, le=1)
    #: Fire only between these seconds after the faults were installed.
    window: tuple[float, float] | None = None
    #: Only for documents whose name matches one of these patterns (ports ocr, parser).
    documents: list[str] = Field(default_factory=list)
    latency_s: float = Field(default=0.0, ge=0, le=60)
    retry_after_s: float | None = Field(default=None, ge=0, le=600)
    message: str = ""
    #: How often it must fire (default: at least once - the coverage invariant).
    fired: Count | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        operations = PORT_OPERATIONS[self.port]
        if self.operation is not None and self.operation not in operations:
            raise ValueError(
                f"port {self.port!r} has operations {', '.join(operations)}; got {self.operation!r}"
            )
        if not fault_modes(self.port, self.operation, self.kind):
            where = f"{self.port}.{self.operation}" if self.operation else f"port {self.port!r}"
            supported = sorted(
                {k for o in (self.operation,) if o for k in FAULT_CATALOGUE[self.port][o]}
                or {k for kinds in FAULT_CATALOGUE[self.port].values() for k in kinds}
            )
            raise ValueError(
                f"{where} has no fault kind {self.kind!r}; it supports {', '.join(supported)}"
            )
        if self.documents and self.port not in DOCUMENT_AWARE_PORTS:
            raise ValueError(
                f"'documents' needs a port that knows the document "
                f"({', '.join(sorted(DOCUMENT_AWARE_PORTS))}); {self.port!r} does not"
            )
        if self.window is not None and not 0 <= self.window[0] < self.window[1]:
            raise ValueError("window must be [start_s, end_s] with 0 <= start_s < end_s")
        if self.kind in ("latency", "hang") and self.latency_s <= 0:
            raise ValueError(f"a {self.kind} fault needs latency_s > 0")
        return self


class Redeliver(_Strict):
    """Send these stages' tasks again for the matching documents (a duplicate delivery)."""

    stages: list[Stage] = Field(min_length=1)
    documents: list[str] = Field(default_factory=lambda: ["*"])


class Reprocess(_Strict):
    """Reprocess the matching documents (new processing version; caches must not leak)."""

    documents: list[str] = Field(default_factory=lambda: ["*"])


class Action(_Strict):
    """Something done after every document reached a terminal status; then the run waits again."""

    redeliver: Redeliver | None = None
    reprocess: Reprocess | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.redeliver is None) == (self.reprocess is None):
            raise ValueError("give exactly one of 'redeliver' or 'reprocess'")
        return self


class DocumentExpectation(_Strict):
    """What must hold for every document whose name matches `match` (at least one must)."""

    match: str
    status: Status | list[Status] | None = None
    error_contains: str | None = None
    chunks: Count | None = None
    mentions: Count | None = None
    entities: Count | None = None
    relationships: Count | None = None
    processing_version: int | None = Field(default=None, ge=1)


class Totals(_Strict):
    documents: Count | None = None
    completed: Count | None = None
    failed: Count | None = None
    by_status: dict[Status, Count] | None = None
    chunks: Count | None = None
    mentions: Count | None = None
    entities: Count | None = None
    relationships: Count | None = None


class DeadLetters(_Strict):
    count: Count | None = None
    #: Patterns of document names that must be (exactly) the dead-lettered ones.
    documents: list[str] | None = None
    stages: list[Stage] | None = None
    error_contains: str | None = None


class Expectations(_Strict):
    documents: list[DocumentExpectation] = Field(default_factory=list)
    totals: Totals | None = None
    #: Calls per "port.operation" (e.g. "llm.extract"): attempts against each service.
    calls: dict[str, Count] = Field(default_factory=dict)
    dead_letters: DeadLetters | None = None
    #: The settings are refused before anything runs, with this text in the message.
    settings_rejected: str | None = None
    #: Broker mode: the run is refused before submitting (e.g. a queue without consumer).
    preflight_error: str | None = None

    @model_validator(mode="after")
    def _calls_known(self) -> Self:
        known = {f"{p}.{o}" for p, ops in PORT_OPERATIONS.items() for o in ops}
        for name in self.calls:
            if name not in known:
                raise ValueError(f"calls: unknown {name!r}; expected one of {sorted(known)}")
        return self


def _settings_overrides_model() -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, info in Settings.model_fields.items():
        if name in RUNNER_OWNED_SETTINGS:
            continue
        optional: Any = Optional.__getitem__(info.annotation)  # a type built at runtime
        fields[name] = (optional, Field(default=None, description=info.description))
    return create_model(
        "SettingsOverrides",
        __config__=ConfigDict(extra="forbid", frozen=True),
        __doc__="Settings fields (DOCPIPE_* without the prefix, lower case) for this run.",
        **fields,
    )


SettingsOverrides = _settings_overrides_model()


class Disruption(_Strict):
    """A process-level disruption of the private stack (broker mode only), timed from the
    first dispatch, lasting `down_s` seconds: `restart_redis` stops the redis-server (it
    persists with appendfsync always, so queued and unacked messages survive);
    `database_unreachable` runs the scenario on a throw-away PostgreSQL database
    (DOCPIPE_SCENARIO_POSTGRES_URL) that workers reach through a proxy, and the proxy
    drops every connection and refuses new ones."""

    kind: Literal["restart_redis", "database_unreachable"]
    at_s: float = Field(ge=0, le=600)
    down_s: float = Field(gt=0, le=120)

    @property
    def duration_s(self) -> float:
        return self.down_s


#: The brokers broker mode runs on (`docpipe scenario run --broker`).
BrokerName = Literal["redis", "rabbitmq"]
BROKERS: tuple[BrokerName, ...] = ("redis", "rabbitmq")


def _every_broker() -> list[BrokerName]:
    return list(BROKERS)


class BrokerOptions(_Strict):
    """Broker mode only."""

    #: Give up waiting for terminal statuses after this long (stuck documents fail the run).
    timeout_s: float = Field(default=90, gt=0, le=1800)
    #: Start no worker for these queues (a queue nobody consumes, REFERENCE.md failure 1).
    omit_queues: list[Literal["ocr", "text", "entity", "graph"]] = Field(default_factory=list)
    #: Run queue-processor cycles while waiting: a document without progress for
    #: `queue_stale_after_s` gets its current stage sent again (a lost message).
    queue_processor: bool = False
    #: The brokers this scenario runs on (`--broker`); any other is skipped with `only_because`.
    brokers: list[BrokerName] = Field(default_factory=_every_broker, min_length=1)
    #: Why the scenario is specific to `brokers` (shown as the skip reason on the others).
    only_because: str | None = None


class Deployment(_Strict):
    """Broker mode only: how the workers are deployed."""

    #: false: the workers behave like separate hosts that share only PostgreSQL, Redis
    #: and S3. Each starts in a folder of its own (cwd, HOME and TMPDIR) outside the
    #: run folder, blobs are on S3 (a moto server), the database is a throw-away
    #: PostgreSQL database (DOCPIPE_SCENARIO_POSTGRES_URL); a file:// or sqlite URL or
    #: a path of the run folder in a worker's environment fails the run, and so does a
    #: stored file found in a worker's folder afterwards.
    #: `docpipe scenario run --no-shared-fs` sets it for every scenario run.
    shared_filesystem: bool = True


class Scenario(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str
    #: Which real failure (REFERENCE.md "Real failures") or pitfall this reproduces.
    reference: str | None = None
    seed: int = 0
    modes: list[Mode] = Field(default_factory=lambda: list(ALL_MODES), min_length=1)
    documents: list[DocumentSpec] = Field(min_length=1)
    adapters: Adapters = Field(default_factory=Adapters)
    settings: SettingsOverrides = Field(default_factory=SettingsOverrides)  # type: ignore[valid-type]
    latency: dict[Port, Latency] = Field(default_factory=dict)
    faults: list[Fault] = Field(default_factory=list)
    #: Broker mode: restart Redis or cut the database off mid-run (see Disruption).
    disruptions: list[Disruption] = Field(default_factory=list)
    then: list[Action] = Field(default_factory=list)
    broker: BrokerOptions = Field(default_factory=BrokerOptions)
    #: Broker mode: workers as separate hosts (see Deployment).
    deployment: Deployment = Field(default_factory=Deployment)
    expect: Expectations = Field(default_factory=Expectations)

    @model_validator(mode="after")
    def _process_faults_need_broker(self) -> Self:
        for index, fault in enumerate(self.faults):
            modes = fault_modes(fault.port, fault.operation, fault.kind)
            target = f"{fault.port}.{fault.operation or '*'}"
            if "eager" in self.modes and "eager" not in modes:
                raise ValueError(
                    f"faults[{index}]: {fault.kind} on {target} "
                    + (
                        "kills the process it runs in; declare `modes: [broker]`"
                        if "broker" in modes
                        else "is simulated only; declare `modes: [sim]`"
                    )
                )
            if "broker" in self.modes and "broker" not in modes:
                raise ValueError(
                    f"faults[{index}]: {fault.kind} on {target} is a simulator-only fault "
                    "(a real deployment cannot be made to suffer it on cue); "
                    "declare `modes: [sim]`"
                )
        for index, disruption in enumerate(self.disruptions):
            if self.modes != ["broker"]:
                raise ValueError(
                    f"disruptions[{index}]: {disruption.kind} disrupts real processes; "
                    "declare `modes: [broker]`"
                )
        return self

    @model_validator(mode="after")
    def _latency_on_calls(self) -> Self:
        for port in self.latency:
            if "latency" not in fault_modes(port, None, "latency") and not any(
                "latency" in kinds for kinds in FAULT_CATALOGUE[port].values()
            ):
                raise ValueError(f"latency: port {port!r} has no calls to slow down")
        return self

    def overrides(self) -> dict[str, Any]:
        overrides: BaseModel = self.settings
        values: dict[str, Any] = overrides.model_dump(exclude_none=True)
        return values


def scenario_json_schema() -> dict[str, Any]:
    schema = Scenario.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "docpipe scenario"
    return schema


def schema_text() -> str:
    return json.dumps(scenario_json_schema(), indent=2, sort_keys=True) + "\n"


# --- loading, with messages that name file, key path and expectation -----------------


def _loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that holds the key at `loc` (for listing the allowed keys)."""
    current: Any = Scenario
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _find_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _find_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _find_model(arg)
        if found is not None:
            return found
    return None


def _message(error: Any) -> str:
    loc = tuple(p for p in error["loc"] if not str(p).startswith(("function-", "union[")))
    # Pydantic tags union members in the path ("int", "Bound"); they are not keys.
    loc = tuple(p for p in loc if p not in {"int", "Bound", "list[enum]", "enum"})
    if error["type"] == "extra_forbidden":
        model = _model_at(loc)
        allowed = (
            ", ".join(model.model_fields) if model is not None else "see scenarios/schema.json"
        )
        return f"{_loc(loc)}: unknown key; expected one of: {allowed}"
    if error["type"] == "missing":
        return f"{_loc(loc)}: required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{_loc(loc)}: {message} (got {error.get('input')!r})"


def parse_scenario(data: object, source: str) -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: expected a mapping at the top level, got {data!r:.60}")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        seen: list[str] = []
        for error in exc.errors():
            message = _message(error)
            if message not in seen:
                seen.append(message)
        raise ScenarioError(f"{source}: " + f"\n{source}: ".join(seen)) from None


#: libyaml's safe loader where PyYAML has it (its wheels do): the same documents as
#: `yaml.safe_load`, ~9x faster (2.2 -> 0.24 ms for a scenario file here); the test suite
#: loads every scenario file a few times in each of its processes.
_FAST_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_scenario(path: Path) -> Scenario:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the scenario file ({exc.strerror})") from None
    try:
        data = yaml.load(text, Loader=_FAST_SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {_yaml_error(text, exc)}") from None
    return parse_scenario(data, str(path))


def _yaml_error(text: str, error: yaml.YAMLError) -> str:
    """The pure-Python parser's account of the error: it quotes the line, a caret under
    the fault (libyaml's gives only line and column)."""
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return str(exc)
    return str(error)


def matches(name: str, patterns: list[str] | str) -> bool:
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
