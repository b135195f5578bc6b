"""`docpipe db upgrade`: apply the schema migrations (repeatable; a second run changes nothing).

Works on SQLite and PostgreSQL, including a Supabase project: use its pooler
connection string with `?sslmode=require` (see pipeline.adapters.sql
`postgres_engine_options` for prepared statements on the pooler's port 6543).
Exit codes: 0 done, 1 the database could not be reached or a step failed,
2 usage or configuration errors.
"""

from __future__ import annotations

import json
import sys

import click

from pipeline.console import configuration_errors, load_settings, stderr, stdout


@click.group()
def db() -> None:
    """Database schema: upgrade to the latest version."""


@db.command()
@click.option(
    "--database-url", help="Database URL (default: DOCPIPE_DATABASE_URL or the SQLite file)."
)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def upgrade(database_url: str | None, as_json: bool) -> None:
    """Create or upgrade every docpipe table; records the version in `schema_version`."""
    from sqlalchemy.exc import DBAPIError

    from pipeline.adapters.sql import create_database_engine
    from pipeline.adapters.sql.migrations import upgrade as upgrade_schema
    from pipeline.display import markup_safe
    from pipeline.redaction import redact
    from pipeline.settings import redact_url

    settings = load_settings(database_url=database_url)
    shown = redact_url(settings.database_url)
    with configuration_errors():
        engine = create_database_engine(settings.database_url)
    try:
        result = upgrade_schema(engine)
    except DBAPIError as exc:
        stderr.print(
            f"[bold red]error:[/] {markup_safe(shown)}: {markup_safe(redact(str(exc.orig)))}"
        )
        sys.exit(1)
    finally:
        engine.dispose()
    if as_json:
        payload = {
            "database_url": shown,
            "from_version": result.from_version,
            "to_version": result.to_version,
            "applied": result.applied,
            "created_tables": result.created_tables,
            "changed": result.changed,
        }
        click.echo(json.dumps(payload, indent=2))
        return
    if not result.changed:
        stdout.print(f"{shown}: schema is up to date (version {result.to_version})")
        return
    stdout.print(
        f"{shown}: schema upgraded from version {result.from_version} to {result.to_version}; "
        f"created {len(result.created_tables)} tables"
    )


COMMANDS: list[click.Command] = [db]
