"""Features that live in pip extras: a command checks before it starts and names the extra.

`pip install docpipe` is what a production worker needs (the embedded default,
the production adapters, the worker pools). The rest is optional:

- `harness`: the load test (locust, matplotlib), `simulate --plot` (matplotlib)
  and the `sim-cloud` scenario profile (moto's S3 server + flask-cors);
- `flower`: the `docpipe flower` dashboard;
- `ocr`: local OCR of scanned pages (checked in pipeline.adapters.local_ocr,
  where a missing extra fails one document, not the command).

A command that needs an absent extra stops with exit code 2 before any work,
saying which extra to install - never an ImportError traceback minutes in.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from pipeline.errors import UserFacingError

#: Top-level modules each extra provides (import names, not distribution names).
HARNESS_MODULES: dict[str, tuple[str, ...]] = {
    "load": ("locust", "matplotlib"),
    "soak": ("matplotlib",),
    "plot": ("matplotlib",),
    "sim-cloud": ("moto", "flask", "flask_cors"),
}
FLOWER_MODULES = ("flower",)


class MissingExtra(UserFacingError):
    """A command needs modules from an extra that is not installed (exit code 2)."""


def install_hint(extra: str) -> str:
    return f"install 'docpipe[{extra}]'"


def missing_modules(modules: Sequence[str]) -> list[str]:
    """The modules of `modules` the import system cannot find (top-level names)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def missing_extra_reason(extra: str, modules: Sequence[str], needed_by: str) -> str | None:
    """Why `needed_by` cannot run here, naming the extra; None when every module is there."""
    missing = missing_modules(modules)
    if not missing:
        return None
    return f"{needed_by} needs {', '.join(missing)}: {install_hint(extra)}"


def require_extra(extra: str, modules: Sequence[str], needed_by: str) -> None:
    """Raise MissingExtra (exit 2) unless every module of `modules` can be imported."""
    reason = missing_extra_reason(extra, modules, needed_by)
    if reason is not None:
        raise MissingExtra(reason)  # the reason already says what to install
