"""`docpipe documents` (the list) and the human view of `docpipe status` (one document).

Both show short uuids (pipeline.app.document_ids) that every command accepts back.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from pipeline.app.document_ids import short_uuid
from pipeline.console import configuration_errors, load_settings, stdout
from pipeline.display import markup_safe
from pipeline.domain.models import Status

if TYPE_CHECKING:
    from pipeline.ports.services import Services

EXIT_OK = 0


def timestamp(epoch: float | None) -> str:
    """UTC, to the millisecond: history rows of one run are often in the same second."""
    if epoch is None:
        return "-"
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@click.command()
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in Status]),
    help="Only documents in this status (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
@click.option(
    "--database-url", help="Database URL (default: DOCPIPE_DATABASE_URL or the SQLite file)."
)
def documents(statuses: tuple[str, ...], as_json: bool, database_url: str | None) -> None:
    """List documents, oldest first: short uuid, file, status, error, last update.

    The short uuid (or any longer prefix of the uuid that names one document)
    is accepted by `docpipe status`, `reset` and `dlq replay|purge`.
    """
    from pipeline.bootstrap import build_services

    settings = load_settings(database_url=database_url)
    with configuration_errors():
        services = build_services(settings)
    with services:
        wanted = [Status(s) for s in statuses] or None
        rows: list[dict[str, Any]] = [
            {
                "short_uuid": short_uuid(d.uuid),
                "document_uuid": d.uuid,
                "file": d.original_file_name,
                "status": str(d.status),
                "error": d.error_message,
                "processing_version": d.processing_version,
                "created_at": d.created_at,
                "updated_at": d.updated_at,
            }
            for d in services.store.list_documents(wanted)
        ]
        if as_json:
            click.echo(json.dumps({"documents": rows, "count": len(rows)}, indent=2))
            sys.exit(EXIT_OK)
        from rich.table import Table

        table = Table(title=f"documents ({len(rows)})", title_justify="left")
        for column in ("uuid", "file", "status", "version", "updated (UTC)", "error"):
            table.add_column(column)
        for row in rows:
            table.add_row(
                row["short_uuid"],
                markup_safe(row["file"]),
                row["status"],
                str(row["processing_version"]),
                timestamp(row["updated_at"]),
                markup_safe(row["error"] or ""),
            )
        stdout.print(table)


def print_status(services: Services, payload: dict[str, Any]) -> None:
    """The human view of `docpipe status`: the row, its history and the Redis state hash."""
    stdout.print(
        f"{markup_safe(payload['file'])}  [bold]{payload['status']}[/]  {payload['document_uuid']}"
    )
    stdout.print(
        f"version {payload['processing_version']}, created {timestamp(payload['created_at'])}, "
        f"updated {timestamp(payload['updated_at'])}, task {payload['celery_task_id'] or '-'}"
    )
    if payload["error"]:
        stdout.print(f"error: {markup_safe(payload['error'])}")
    if payload.get("note"):
        stdout.print(f"[yellow]note:[/] {markup_safe(payload['note'])}")
    stdout.print("history (UTC):")
    for entry in payload["history"]:
        line = f"  {timestamp(entry['at'])}  v{entry['version']}  {entry['stage']:<30} "
        line += entry["status"]
        stdout.print(
            markup_safe(line) + (f"  {markup_safe(entry['error'])}" if entry["error"] else "")
        )
    state: dict[str, str] = payload["state"]
    where = services.settings.describe()["redis_url"]
    if not state:
        why = (
            "the embedded default keeps it in the process that ran the document"
            if services.settings.redis_url.startswith("fakeredis")
            else "nothing recorded, or expired after "
            f"DOCPIPE_STATE_TTL_S={services.settings.state_ttl_s}"
        )
        stdout.print(f"redis state ({where}): none - {why}")
        return
    stdout.print(f"redis state ({where}), last status {state.get('last_status', '-')}:")
    stages = {k.removesuffix("_status") for k in state if k.endswith("_status")} - {"last"}
    for stage in sorted(stages, key=lambda name: float(state.get(f"{name}_timestamp") or 0)):
        at = state.get(f"{stage}_timestamp")
        line = f"  {timestamp(float(at)) if at else '-'}  {stage:<20} {state[f'{stage}_status']}"
        metadata = state.get(f"{stage}_metadata")
        stdout.print(markup_safe(line + (f"  {metadata}" if metadata else "")))


COMMANDS: list[click.Command] = [documents]
