"""Options the harness commands share (load, soak, simulate): one definition each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from pipeline.harness.layout import PLAN_LAYOUT

F = TypeVar("F", bound=Callable[..., Any])

profile_option = click.option(
    "--profile",
    type=click.Choice(["none", "reference"]),
    default="reference",
    show_default=True,
    help="Latency profile of the simulated services.",
)
seed_option = click.option("--seed", type=int, default=0, show_default=True)


def time_scale_option(default: float = 0.1, help: str | None = None) -> Callable[[F], F]:
    return click.option(
        "--time-scale",
        type=click.FloatRange(min=0, min_open=True),
        default=default,
        show_default=True,
        help=help
        or "Multiplies every simulated wait (and the poll interval and rate-limit window).",
    )


def layout_option(help: str = "Worker layout: queue[+queue]:pool:N items.") -> Callable[[F], F]:
    return click.option("--layout", default=PLAN_LAYOUT, show_default=True, help=help)


def documents_option(help: str) -> Callable[[F], F]:
    """--documents, the sample documents by default (shipped in the package)."""
    from pipeline.library import SAMPLES

    return click.option(
        "--documents",
        type=click.Path(exists=True, path_type=Path),
        default=SAMPLES,
        show_default=True,
        help=help,
    )
