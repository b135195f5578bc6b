"""The one settings object: env vars prefixed `DOCPIPE_`, `.env` supported.

Defaults are the embedded default: SQLite under `.docpipe/`, blobs on the
local disk, fakeredis for state/cache/locks/rate limits, Celery in eager
mode, fake OCR and a rule-based extractor. No Redis, cloud or credentials.
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.errors import ConfigurationError
from pipeline.redaction import redact_url as redact_url  # re-exported for its many callers
from pipeline.redaction import remember_secrets

#: Celery pools that enforce task_soft_time_limit_s / task_time_limit_s (FEASIBILITY.md:
#: threads, gevent, eventlet and solo let a hung call run on).
TIME_LIMIT_POOLS: frozenset[str] = frozenset({"prefork"})

UNPROTECTED_POOLS_NOTE = (
    "Celery enforces time limits only in the prefork pool; on threads, gevent and solo "
    "pools a hung call is ended by its own timeout, and a delivery that outlives the "
    "visibility timeout anyway is fenced out (its writes are discarded)"
)

#: Local OCR checks `ocr_local_job_timeout_s` between pages, so the page being read when
#: the limit passes still finishes: room for one page before the soft time limit (an A4
#: page at 200 dpi took ~10 s of CPU with one thread on the 2-core dev machine,
#: scripts/measure_ocr.py; more at 600 dpi or on a busy machine).
OCR_LOCAL_PAGE_ALLOWANCE_S = 60.0


def is_loopback_url(url: str | None) -> bool:
    """Whether `url` points at this machine (a local fake, never a cloud service)."""
    if not url:
        return False
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def single_host_note(settings: Settings) -> str | None:
    """Why workers on other hosts cannot share this deployment, or None when they can.

    A file:// blob store and a SQLite database are directories on this machine:
    a worker on another host (the broker is not on loopback, so there may be
    one) sees its own, different folder. Workers that share only PostgreSQL,
    Redis and S3 need `s3://` blobs and a PostgreSQL database.
    """
    if is_loopback_url(settings.broker_url) or settings.broker_url.startswith("memory://"):
        return None
    local = []
    if settings.blob_url.startswith("file://"):
        local.append(f"blobs ({settings.blob_url})")
    if settings.database_url.startswith("sqlite"):
        local.append("the SQLite database")
    if not local:
        return None
    return (
        f"{' and '.join(local)} live on this host only: a worker on another host cannot read "
        "them; run every worker here or use DOCPIPE_BLOB_URL=s3://BUCKET/PREFIX and a "
        "PostgreSQL DOCPIPE_DATABASE_URL"
    )


def pool_time_limit_note(settings: Settings, pool: str) -> str | None:
    """What protects a worker of `pool` from a hung call, or None when Celery's limits do."""
    if pool in TIME_LIMIT_POOLS:
        return None
    limits = ", ".join(f"{name} {s:g}s" for name, s in settings.outbound_timeouts().items())
    if settings.broker_kind == "amqp":
        redelivered = f"RabbitMQ's consumer_timeout ({settings.broker_consumer_timeout_s}s)"
    else:
        redelivered = f"the visibility timeout ({settings.visibility_timeout_s}s)"
    return (
        f"the {pool} pool does not enforce task time limits "
        f"(task_soft_time_limit_s {settings.task_soft_time_limit_s}s): hung calls end by their "
        f"own timeouts ({limits}); a delivery that outlives {redelivered} is fenced out, "
        "its writes discarded"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DOCPIPE_", env_file=".env", extra="ignore", frozen=True
    )

    # --- where things live -----------------------------------------------------
    database_url: str = "sqlite:///.docpipe/docpipe.db"
    blob_url: str = "file://.docpipe/blobs"
    #: State, cache, locks, rate limits (not the broker). `fakeredis://` = in-process.
    redis_url: str = "fakeredis://"
    broker_url: str = "memory://"
    result_backend: str | None = None
    #: Run tasks in-process (`task_always_eager`). `docpipe run --broker` turns it off.
    eager: bool = True

    # --- adapters ----------------------------------------------------------------
    ocr: Literal["fake", "textract"] = "fake"
    llm: Literal["fake", "openai"] = "fake"
    graph_url: str = "memory://"
    #: Real cloud adapters refuse to build while this is False under tests.
    allow_cloud: bool = True
    #: Fakes follow the fault rules installed in Redis (scenarios, tests). Off in production.
    fault_injection: bool = False
    #: Admin URL of a PostgreSQL server on which broker-mode scenarios that cut the
    #: database off create (and drop) a throw-away database. Unset: they are skipped.
    scenario_postgres_url: str | None = None
    #: A RabbitMQ server (amqp:// URL of a user who may create vhosts) on which broker-mode
    #: scenarios and tests on RabbitMQ create (and delete) a throw-away vhost.
    scenario_rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"

    # --- AWS: DOCPIPE_BLOB_URL=s3://bucket/prefix, DOCPIPE_OCR=textract -----------
    #: The bucket when the blob url names none (`s3://` or `s3:///prefix`).
    s3_bucket: str | None = None
    aws_region: str = "us-east-1"
    #: A local simulator (moto server) instead of AWS; a loopback URL is allowed under tests.
    aws_endpoint_url: str | None = None
    #: boto3's attempts per call (standard retry mode), the first one included.
    aws_max_attempts: int = Field(default=3, ge=1)
    #: Each boto3 attempt's own limits (S3, Textract): below the soft time limit, since
    #: only the prefork pool enforces time limits (`TIME_LIMIT_POOLS`).
    aws_connect_timeout_s: float = Field(default=10.0, gt=0)
    aws_read_timeout_s: float = Field(default=60.0, gt=0)
    #: LINE blocks below this Textract confidence (0-100) are left out of the text.
    textract_min_confidence: float = Field(default=80.0, ge=0, le=100)
    #: Textract's asynchronous limit for PDFs; checked before a job is started.
    max_pdf_pages: int = Field(default=3000, ge=1)

    # --- pipeline knobs ------------------------------------------------------------
    project_name: str = "default"
    max_file_bytes: int = Field(default=500 * 1024 * 1024, gt=0)
    # What one file may expand to (a 392 KB DOCX held 100 MB of XML). Each limit fails
    # that document alone, naming the setting. Measured in eager mode: 149,420 mentions
    # (4,673 chunks) peak at 984 MB, 246,536 mentions at 1.55 GB - hence 150,000.
    #: Characters of text extracted from one document (~3,000 pages of dense prose).
    max_extracted_chars: int = Field(default=10_000_000, ge=1)
    #: Uncompressed bytes of any one member of a DOCX (ZIP), checked before parsing.
    max_zip_member_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    #: Uncompressed bytes of all members of a DOCX together.
    max_zip_total_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    #: Uncompressed / compressed size of a member above 1 MiB (real XML: 3-30x; bombs: 1000x).
    max_compression_ratio: float = Field(default=100.0, gt=1)
    #: Chunks (and so LLM calls): 10 M characters make ~7,700 at the default chunk sizes.
    max_chunks_per_document: int = Field(default=10_000, ge=1)
    #: Entity mentions; resolution and relationship staging hold them all in memory.
    max_mentions_per_document: int = Field(default=150_000, ge=1)
    chunk_min_chars: int = Field(default=300, ge=1)
    chunk_max_chars: int = Field(default=1500, ge=10)
    fuzzy_threshold: float = Field(default=0.88, gt=0, le=1)
    llm_rate_limit_calls: int = Field(default=50, ge=1)
    #: Tokens per window (prompt + expected answer each request reserves); 0 = no token
    #: limit. 200,000 is OpenAI's tier-1 tokens per minute for gpt-4o-mini (500 requests).
    llm_rate_limit_tokens: int = Field(default=200_000, ge=0)
    llm_rate_limit_window_s: float = Field(default=60.0, gt=0)
    #: Consecutive chunks packed into one LLM request up to this many estimated tokens
    #: (prompt and answer, pipeline.domain.tokens); 0 = one chunk per request.
    llm_pack_tokens: int = Field(default=8000, ge=0)
    #: List prices in USD per 1M tokens (input, output) by model, for cost reports: OpenAI's
    #: standard (not batch, not cached-input) prices, gpt-4o-mini 0.15/0.60 since its launch
    #: on 2024-07-18 and gpt-4o 2.50/10.00 (gpt-4o-2024-08-06); still listed so in 2026
    #: (checked 2026-12-06 against published price tables). JSON in the env variable.
    llm_prices_usd_per_mtok: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00)}
    )
    #: A stage waits this long at most for a rate-limit slot before it retries later.
    llm_rate_limit_max_wait_s: float = Field(default=120.0, ge=0)
    cache_ttl_s: int = Field(default=12 * 3600, ge=1)
    state_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    lock_ttl_s: int = Field(default=900, ge=1)

    # --- the processing queue (document_processing_queue) ---------------------
    queue_max_attempts: int = Field(default=3, ge=1)
    #: A claim older than this is presumed dead and is reset (its worker died); a document
    #: in a stage without progress this long gets the stage sent again (a lost message).
    queue_stale_after_s: float = Field(default=900.0, gt=0)

    # --- OCR polling: a rescheduled poll, never a blocking loop (failure 11) ---
    ocr_poll_interval_s: float = Field(default=5.0, ge=0)
    ocr_max_polls: int = Field(default=120, ge=1)
    fake_ocr_polls_until_done: int = Field(default=1, ge=0)
    # --- local OCR of image-only PDF pages (the `[ocr]` extra, pipeline/adapters/local_ocr.py) ---
    #: The embedded default OCRs pages without a text layer when the extra is installed.
    ocr_local: bool = True
    #: Scanned pages one document may have OCR'd locally (~10 s of CPU each, A4 at 200 dpi).
    ocr_local_max_pages: int = Field(default=50, ge=1)
    #: Seconds one document's local OCR may take, checked between pages.
    ocr_local_job_timeout_s: float = Field(default=600.0, gt=0)
    #: Rendering resolution of scanned pages for OCR.
    ocr_local_dpi: int = Field(default=200, ge=72, le=600)
    #: onnxruntime threads per OCR process (0: one per core). With 1 the `ocr` worker's
    #: concurrency is the number of cores OCR may take from the other queues.
    ocr_local_threads: int = Field(default=1, ge=0)

    # --- simulated service latency (pipeline/adapters/latency.py) ----------------------------
    #: `none` (no waits) or `reference` (the old system's measured timings).
    latency_profile: Literal["none", "reference"] = "none"
    #: Per-service overrides, e.g. {"llm_call": "uniform:0.5:2"} (JSON in the env var).
    latency_overrides: dict[str, str] = Field(default_factory=dict)
    #: Multiplies every simulated wait: 0.1 runs the reference profile ten times faster.
    time_scale: float = Field(default=1.0, gt=0)
    latency_seed: int = 0

    # --- Celery: the seed's configuration, corrected -----------------------------------
    task_soft_time_limit_s: int = Field(default=3600, ge=1)
    task_time_limit_s: int = Field(default=3900, ge=1)
    #: Retries of one stage of one document in a row WITHOUT progress (pipeline/app/policy.py):
    #: an attempt that made durable progress (e.g. newly answered chunks) restarts the count.
    max_retries: int = Field(default=5, ge=0)
    #: Absolute ceiling on the attempts of one stage of one document, progress or not.
    max_task_attempts: int = Field(default=200, ge=1)
    retry_backoff_base_s: float = Field(default=2.0, ge=0)
    retry_backoff_max_s: float = Field(default=600.0, ge=0)
    #: Redis redelivers unacked tasks after this; must exceed time limit + largest countdown.
    #: Redis brokers only: RabbitMQ redelivers on a lost connection, not after a timeout.
    visibility_timeout_s: int = Field(default=4800, ge=1)
    #: kombu's sweep for unacked messages past the visibility timeout: every interval
    #: seconds, scanning Redis every throttle-th time (kombu's defaults: a scan every ~100 s).
    broker_restore_interval_s: int = Field(default=10, ge=1)
    broker_restore_throttle: int = Field(default=10, ge=1)
    broker_max_connections: int = Field(default=200, ge=10)
    #: How many times a task may kill its worker before the document is dead-lettered.
    #: On RabbitMQ quorum queues the broker enforces it too (`x-delivery-limit`). At most
    #: 1000: far below the count that marks an attempt finished (`ATTEMPT_FINISHED`).
    max_redeliveries: int = Field(default=3, ge=1, le=1000)
    # --- RabbitMQ brokers (DOCPIPE_BROKER_URL=amqp://...) -------------------------------
    #: `quorum`: durable queues whose delivery limit stops a poison message at the broker,
    #: with countdowns in RabbitMQ's delay queues (Celery's native delayed delivery).
    #: `classic`: no delivery limit; a worker holds countdown messages unacked meanwhile.
    broker_queue_type: Literal["quorum", "classic"] = "quorum"
    #: The RabbitMQ server's `consumer_timeout` (rabbitmq.conf, in seconds here; RabbitMQ's
    #: default is 30 min): it closes the channel of a delivery unacked for longer, and the
    #: message is redelivered while the task still runs. Must exceed the task time limit.
    broker_consumer_timeout_s: int = Field(default=1800, ge=1)

    # --- credentials (only ever read from settings, never printed) ------------
    openai_api_key: SecretStr | None = None
    openai_model: str = "gpt-4o-mini"
    #: None = the public API. A loopback URL (the OpenAI fake) is allowed under tests.
    openai_base_url: str | None = None
    openai_timeout_s: float = Field(default=60.0, gt=0)
    #: Neo4j: connect and acquire limits, and the server-side transaction timeout.
    neo4j_timeout_s: float = Field(default=60.0, gt=0)
    #: Used when `graph_url` is `neo4j://`, `neo4j+s://`, `bolt://` or `bolt+s://`.
    neo4j_user: str = "neo4j"
    neo4j_password: SecretStr | None = None
    neo4j_database: str = "neo4j"
    flower_basic_auth: SecretStr | None = None
    #: Where Flower answers, for `docpipe doctor` to probe without credentials (unset: the
    #: `docpipe flower` default, http://127.0.0.1:5555, if anything listens there).
    flower_url: str | None = None

    @model_validator(mode="after")
    def _remember_secrets(self) -> Settings:
        """Every message docpipe builds from vendor text hides these (pipeline.redaction)."""
        remember_secrets(getattr(self, name) for name in type(self).model_fields)
        return self

    @model_validator(mode="after")
    def _check_relations(self) -> Settings:
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise ValueError("task_soft_time_limit_s must be below task_time_limit_s")
        if self.chunk_min_chars >= self.chunk_max_chars:
            raise ValueError("chunk_min_chars must be below chunk_max_chars")
        if self.max_task_attempts <= self.max_retries:
            raise ValueError(
                f"max_task_attempts ({self.max_task_attempts}) must exceed max_retries "
                f"({self.max_retries}): the ceiling bounds attempts with progress too"
            )
        for name, seconds in self.outbound_timeouts().items():
            if seconds >= self.task_soft_time_limit_s:
                raise ValueError(
                    f"{name} ({seconds:g}) must be below task_soft_time_limit_s "
                    f"({self.task_soft_time_limit_s}): {UNPROTECTED_POOLS_NOTE}"
                )
        ocr_needs = self.ocr_local_job_timeout_s + OCR_LOCAL_PAGE_ALLOWANCE_S
        if self.ocr_local and ocr_needs >= self.task_soft_time_limit_s:
            # One poll task does a whole document's local OCR (the ocr worker): its own
            # limit must end it before Celery's soft limit does (only prefork enforces that).
            raise ValueError(
                f"ocr_local_job_timeout_s ({self.ocr_local_job_timeout_s:g}) plus "
                f"{OCR_LOCAL_PAGE_ALLOWANCE_S:g} s for the page being read when it passes "
                f"must be below task_soft_time_limit_s ({self.task_soft_time_limit_s}): one "
                "OCR poll task reads a whole document's scanned pages and checks the limit "
                "between pages; lower ocr_local_job_timeout_s, raise task_soft_time_limit_s "
                "or turn local OCR off (ocr_local=false)"
            )
        needed = self.task_time_limit_s + self.retry_backoff_max_s
        if self.broker_kind != "amqp" and self.visibility_timeout_s <= needed:
            # Redis (and the in-process memory:// default, which stands in for it).
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s}) must exceed "
                f"task_time_limit_s + retry_backoff_max_s ({needed:g}), otherwise Redis "
                "redelivers long or retried tasks while they still run"
            )
        if self.broker_kind == "amqp":
            unacked, what = self.longest_unacked_s()
            if self.broker_consumer_timeout_s <= unacked:
                raise ValueError(
                    f"broker_consumer_timeout_s ({self.broker_consumer_timeout_s}) must exceed "
                    f"{what} ({unacked:g}): RabbitMQ closes the channel of a delivery unacked "
                    "for longer than its consumer_timeout and redelivers the task while it "
                    "still runs; raise consumer_timeout on the server (rabbitmq.conf, in ms) "
                    "and set broker_consumer_timeout_s to match, or lower task_time_limit_s"
                )
        from pipeline.adapters.latency import SERVICES, parse_distribution

        for service, spec in self.latency_overrides.items():
            if service not in SERVICES:
                raise ValueError(f"latency_overrides: unknown service {service!r}; use {SERVICES}")
            parse_distribution(spec)
        return self

    @property
    def broker_kind(self) -> Literal["redis", "amqp", "memory", "other"]:
        """Which broker `broker_url` names: the rules that apply differ (README, brokers)."""
        scheme = self.broker_url.split("://", 1)[0].lower()
        if scheme in ("redis", "rediss", "sentinel"):
            return "redis"
        if scheme in ("amqp", "amqps", "pyamqp"):
            return "amqp"
        if scheme == "memory":
            return "memory"
        return "other"

    def longest_unacked_s(self) -> tuple[float, str]:
        """How long one delivery may stay unacked on RabbitMQ (late acks), and what makes it up.

        A task runs at most task_time_limit_s. On classic queues a worker also holds a
        retry or an OCR poll, unacked, until its countdown passes; quorum queues park
        countdowns in the broker's delay queues instead (Celery's native delayed delivery).
        """
        if self.broker_queue_type == "quorum":
            return float(self.task_time_limit_s), "task_time_limit_s"
        countdown = max(self.retry_backoff_max_s, self.ocr_poll_interval_s)
        return (
            self.task_time_limit_s + countdown,
            "task_time_limit_s + the largest countdown (retry_backoff_max_s, ocr_poll_interval_s)",
        )

    def outbound_timeouts(self) -> dict[str, float]:
        """The longest one outbound call may take, per setting (a boto3 attempt: connect + read)."""
        return {
            "openai_timeout_s": self.openai_timeout_s,
            "aws_connect_timeout_s + aws_read_timeout_s": (
                self.aws_connect_timeout_s + self.aws_read_timeout_s
            ),
            "neo4j_timeout_s": self.neo4j_timeout_s,
        }

    def describe(self) -> dict[str, str]:
        """What a report may show: URLs redacted, secrets omitted."""
        return {
            "database_url": redact_url(self.database_url),
            "blob_url": redact_url(self.blob_url),
            "redis_url": redact_url(self.redis_url),
            "broker_url": redact_url(self.broker_url),
            "ocr": self.ocr,
            "llm": self.llm,
            "graph_url": redact_url(self.graph_url),
            "mode": "eager" if self.eager else "broker",
        }


#: Fields whose values never appear in an error message.
_SECRET_FIELDS = frozenset({"openai_api_key", "neo4j_password", "flower_basic_auth"})
_FIELD_NAME = re.compile(r"\b(" + "|".join(sorted(Settings.model_fields, key=len)[::-1]) + r")\b")


def env_name(field: str) -> str:
    """The environment variable that sets a field: `max_retries` -> `DOCPIPE_MAX_RETRIES`."""
    return f"DOCPIPE_{field.upper()}"


def describe_settings_error(exc: ValidationError) -> str:
    """One line per invalid setting, named by its environment variable.

    Cross-field checks (the model validator) name their fields in the text;
    those names are rewritten to variable names too. Secret values are never
    echoed, other values are shown redacted so the user sees what was read.
    """
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        message = _FIELD_NAME.sub(lambda match: env_name(match.group(1)), message)
        if not field:
            lines.append(message)
            continue
        name = env_name(field.split(".")[0])
        given = error.get("input")
        if field.split(".")[0] not in _SECRET_FIELDS and isinstance(given, str) and len(given) < 80:
            message += f" (got {redact_url(given)!r})"
        lines.append(f"{name}: {message}")
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment/.env plus `overrides` (None = not given).

    Invalid values raise `ConfigurationError` naming the variables, never a
    pydantic traceback.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigurationError(
            "invalid settings:\n" + describe_settings_error(exc),
            hint="fix these DOCPIPE_* variables in the environment or in .env",
        ) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process (not at import time)."""
    return load_settings()


def settings_over_environment(values: dict[str, Any]) -> Settings:
    """`Settings(_env_file=None, **values)`, for callers that build thousands of them.

    Reading the `DOCPIPE_` variables through pydantic-settings' sources is most of
    the cost of building Settings (~30 ms; the simulator builds two per explored
    schedule). The variables are read once per distinct `DOCPIPE_` environment
    and validated again under `values`, which take precedence as keyword
    arguments do: the same object, validators included.
    """
    environment = _environment_values(_docpipe_environ())
    if environment is None:
        # The environment alone is invalid: let the full build say what (or `values` fix it).
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]
    # BaseModel's own __init__: validation and validators without BaseSettings.__init__,
    # which would read the sources again (model_validate calls it too).
    settings = Settings.__new__(Settings)
    BaseModel.__init__(settings, **_deep_update(environment, values))
    return settings


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` over `base`, mappings merged key by key, as pydantic-settings joins sources."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def _docpipe_environ() -> tuple[tuple[str, str], ...]:
    # pydantic-settings matches names case-insensitively.
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith("DOCPIPE_")))


@lru_cache(maxsize=8)
def _environment_values(_environ: tuple[tuple[str, str], ...]) -> dict[str, Any] | None:
    """The fields the environment sets, as parsed values (the key: the variables read)."""
    try:
        read = Settings(_env_file=None)  # type: ignore[call-arg]
    except ValidationError:
        return None
    return {name: getattr(read, name) for name in read.model_fields_set}
