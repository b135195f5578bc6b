"""`docpipe doctor`: check a live deployment against the pitfalls, each finding with its fix.

The checks are pipeline.runtime.doctor's; exit codes: 0 no finding, 1 findings
(listed), 2 the deployment cannot be reached or the settings name none.
"""

from __future__ import annotations

import json
import sys

import click

from pipeline.console import EXIT_FAILED, EXIT_OK, load_settings, say_waiting, stdout
from pipeline.display import markup_safe


@click.command()
@click.option(
    "--flower-url",
    help="Flower to probe without credentials (default: DOCPIPE_FLOWER_URL, else "
    "http://127.0.0.1:5555 if anything answers there).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds to wait for the workers' inspect replies.",
)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def doctor(flower_url: str | None, timeout_s: float, as_json: bool) -> None:
    """Check the live deployment the DOCPIPE_* settings point at; exit 1 listing each finding.

    Asks the broker's Redis (maxmemory-policy, whether the cache shares its
    database, TIME), the workers themselves (queues, pool, prefetch, late
    acks, visibility timeout as they run them; their clocks from heartbeats),
    the database (schema version) and Flower without credentials. Each finding
    says what was seen and the fix. Exit 0 when clean, 1 with findings, 2
    when the deployment cannot be reached.
    """
    from pipeline.runtime.doctor import diagnose, gather_facts
    from pipeline.runtime.monitor import Deployment

    settings = load_settings(eager=False)
    deployment = Deployment.connect(settings, say_waiting)
    try:
        facts = gather_facts(
            settings,
            deployment.app,
            deployment.broker,
            deployment.cache,
            deployment.engine,
            flower_url=flower_url or settings.flower_url,
            inspect_timeout_s=timeout_s,
        )
    finally:
        deployment.close()
    findings = diagnose(facts)
    if as_json:
        payload = {
            "findings": [finding.__dict__ for finding in findings],
            "count": len(findings),
            "facts": facts.as_dict(),
        }
        click.echo(json.dumps(payload, indent=2, default=str))
    else:
        workers = ", ".join(f"{w.name} ({w.pool})" for w in facts.workers) or "none"
        stdout.print(
            f"checked: broker {markup_safe(facts.broker.url if facts.broker else '-')}, "
            f"{len(facts.workers)} worker(s): {markup_safe(workers)}, schema "
            f"v{facts.schema_version}/{facts.latest_schema_version}, Flower "
            f"{markup_safe(facts.flower.url) if facts.flower else 'not found'}",
            soft_wrap=True,
        )
        for note in facts.notes:
            stdout.print(f"[dim]note: {markup_safe(note)}[/]", soft_wrap=True)
        for finding in findings:
            colour = "red" if finding.severity == "error" else "yellow"
            stdout.print(
                f"[bold {colour}]{finding.severity}[/] [bold]{finding.id}[/]"
                + (f" ({markup_safe(finding.subject)})" if finding.subject else ""),
                soft_wrap=True,
            )
            stdout.print(f"  seen: {markup_safe(finding.seen)}", soft_wrap=True)
            stdout.print(f"  fix:  {markup_safe(finding.fix)}", soft_wrap=True)
        stdout.print(
            f"{len(findings)} finding(s)" if findings else "no findings: the deployment is clean"
        )
    sys.exit(EXIT_FAILED if findings else EXIT_OK)


COMMANDS: list[click.Command] = [doctor]
