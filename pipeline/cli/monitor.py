"""`docpipe monitor`: a live view of a broker deployment; `--once --json` for scripts.

The figures are pipeline.runtime.monitor's (broker Redis, Celery inspect and
heartbeat events, the database); this module only renders them. Exit codes:
0, or 2 when the deployment cannot be reached (pipeline.console).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import click

from pipeline.console import load_settings, say_waiting, stdout
from pipeline.display import markup_safe

if TYPE_CHECKING:
    from rich.console import Group

    from pipeline.runtime.monitor import Snapshot


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def render(snapshot: Snapshot, *, broker: str, problem: str | None = None) -> Group:
    """Queues, workers and documents as three tables and a summary line."""
    from rich.console import Group
    from rich.table import Table

    queues = Table(title="queues", title_justify="left")
    for column in ("queue", "ready", "unacked", "active", "reserved", "scheduled", "consumers"):
        queues.add_column(column, justify="left" if column in ("queue", "consumers") else "right")
    for name, row in snapshot.queues.items():
        consumers = ", ".join(row["consumers"]) or "[bold red]none[/]"
        queues.add_row(
            markup_safe(name),
            *(str(row[key]) for key in ("ready", "unacked", "active", "reserved", "scheduled")),
            consumers if not row["consumers"] else markup_safe(consumers),
        )

    workers = Table(title=f"workers ({len(snapshot.workers)})", title_justify="left")
    worker_columns = ("worker", "queues", "pool", "conc.", "active", "reserved", "eta", "done")
    for column in (*worker_columns, "longest task", "heartbeat"):
        left = column in ("worker", "queues", "pool")
        workers.add_column(column, justify="left" if left else "right")
    for worker in snapshot.workers:
        workers.add_row(
            markup_safe(worker["name"]),
            markup_safe(",".join(worker["queues"])),
            str(worker["pool"] or "-"),
            str(worker["concurrency"] or "-"),
            str(worker["active"]),
            str(worker["reserved"]),
            str(worker["scheduled"]),
            str(worker["processed"]),
            _age(worker["longest_active_s"]),
            _age(worker["last_heartbeat_s"])
            + (" ago" if worker["last_heartbeat_s"] is not None else ""),
        )

    documents = snapshot.documents
    statuses = Table(
        title=f"documents ({documents['total']}, rates over the last "
        f"{documents['rate_window_s']:g}s)",
        title_justify="left",
    )
    for column in ("status", "documents", "entered/min"):
        statuses.add_column(column, justify="left" if column == "status" else "right")
    names = sorted(set(documents["by_status"]) | set(documents["entered_per_min"]))
    for status in names:
        statuses.add_row(
            status,
            str(documents["by_status"].get(status, 0)),
            f"{documents['entered_per_min'].get(status, 0):g}",
        )

    limit = snapshot.llm_rate_limit
    used = (
        f"{limit['calls_in_window']}/{limit['limit']} per {limit['window_s']:g}s"
        if limit.get("calls_in_window") is not None
        else "not shared (in-process Redis)"
    )
    drain = documents["time_to_drain_s"]
    summary = (
        f"in flight [bold]{documents['in_flight']}[/], completed "
        f"[bold]{documents['completed_per_min']:g}/min[/], time to drain "
        f"[bold]{_age(drain) if drain is not None else '-'}[/], oldest in flight "
        f"[bold]{_age(snapshot.oldest_in_flight_s)}[/], oldest unacked "
        f"{_age(snapshot.oldest_unacked_s)}, dead letters [bold]{snapshot.dead_letters}[/], "
        f"LLM window {used}"
    )
    taken = time.strftime("%H:%M:%S", time.gmtime(snapshot.taken_at))
    header = f"[dim]docpipe monitor - broker {markup_safe(broker)} - {taken} UTC[/]"
    parts: list[Any] = [header, queues, workers, statuses, summary]
    if problem:
        parts.append(f"[bold red]{markup_safe(problem)}[/]")
    return Group(*parts)


@click.command()
@click.option("--once", is_flag=True, help="Take one snapshot, print it and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --once: print exactly one JSON object.")
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(min=0.5),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes of the live view.",
)
@click.option(
    "--window",
    "window_s",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds of history the rates (and the time to drain) are computed over.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds to wait for the workers' inspect replies.",
)
def monitor(
    once: bool, as_json: bool, interval_s: float, window_s: float, timeout_s: float
) -> None:
    """A live view of the broker deployment the DOCPIPE_* settings point at.

    Per queue: ready (in Redis), unacked (delivered, not acknowledged), and
    what workers hold: active, reserved (waiting for a slot), scheduled
    (ETA/countdown). Per worker: queues, pool, concurrency, tasks, the last
    heartbeat. Documents per status with the rates over --window, the time to
    drain, the oldest in-flight document, dead letters and the LLM rate-limit
    window. Reads DOCPIPE_BROKER_URL, DOCPIPE_REDIS_URL, DOCPIPE_DATABASE_URL.
    `--once --json` prints one snapshot for scripts; Ctrl-C ends the live view.
    """
    from pipeline.redaction import redact_url
    from pipeline.runtime.monitor import Deployment, HeartbeatListener, take_snapshot

    if as_json and not once:
        raise click.UsageError("--json needs --once (the live view is for terminals)")
    settings = load_settings(eager=False)
    deployment = Deployment.connect(settings, say_waiting)
    broker = redact_url(settings.broker_url)
    try:
        if once:
            snapshot = take_snapshot(
                deployment, inspect_timeout_s=timeout_s, rate_window_s=window_s
            )
            if as_json:
                click.echo(json.dumps(snapshot.as_dict(), indent=2, default=str))
            else:
                stdout.print(render(snapshot, broker=broker))
            return
        listener = HeartbeatListener(deployment.app).start()
        _live(deployment, listener, broker, interval_s, window_s, timeout_s)
    finally:
        deployment.close()


def _live(
    deployment: Any,
    listener: Any,
    broker: str,
    interval_s: float,
    window_s: float,
    timeout_s: float,
) -> None:
    from rich.live import Live

    from pipeline.redaction import redact
    from pipeline.runtime.monitor import take_snapshot

    def view() -> Any:
        snapshot = take_snapshot(
            deployment, listener.latest(), inspect_timeout_s=timeout_s, rate_window_s=window_s
        )
        problem = f"heartbeats stopped: {listener.error}" if listener.error else None
        return render(snapshot, broker=broker, problem=redact(problem) if problem else None)

    try:
        with Live(view(), console=stdout, auto_refresh=False) as live:
            while True:
                time.sleep(interval_s)
                live.update(view(), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()


COMMANDS: list[click.Command] = [monitor]
