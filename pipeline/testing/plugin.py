"""The docpipe pytest plugin (entry point `pytest11: docpipe`).

- `pytest scenarios/` collects scenario YAML files as test items, one per mode
  the scenario declares (`scenarios/foo.yaml::eager`, `...::broker`); a failing
  run reports every check with what was expected and what was measured, and the
  command that replays it. Broker items are marked `integration`. Which files
  are scenarios: YAML files matching the ini option `docpipe_scenarios` (default:
  any `*.yaml`/`*.yml` in a folder named `scenarios`).
- Fixtures for the private stack without Docker: `docpipe_redis` (a redis-server
  on a free port for the session) and `docpipe_stack` (a `PrivateStack` per test:
  Redis, a database, workers on demand, kill -9 of a worker, Redis restart,
  database cut; configure it with `@pytest.mark.docpipe_stack(...)`).

Importing this module loads only pytest and the standard library: every project
with docpipe installed loads the plugin, so the harness is imported only when a
scenario item or a docpipe fixture is used. Disable it with `-p no:docpipe`.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pipeline.harness.localstack import RedisServer
    from pipeline.harness.scenarios.model import Scenario
    from pipeline.harness.scenarios.runner import RunReport
    from pipeline.testing.stack import PrivateStack

DEFAULT_PATTERNS = ("*/scenarios/*.yaml", "*/scenarios/*.yml")
MODES = ("eager", "broker", "sim")
POSTGRES_ENV = "DOCPIPE_SCENARIO_POSTGRES_URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("docpipe", "docpipe scenarios and private stack")
    group.addoption(
        "--docpipe-mode",
        action="append",
        choices=MODES,
        default=None,
        help="collect scenario items of this mode only (repeatable; default: the declared modes)",
    )
    group.addoption(
        "--docpipe-keep",
        metavar="DIR",
        default=None,
        help="keep each scenario run's folder (database, blobs, worker logs) under DIR",
    )
    parser.addini(
        "docpipe_scenarios",
        type="linelist",
        default=list(DEFAULT_PATTERNS),
        help="glob patterns (on the absolute path) of the YAML files that are docpipe scenarios",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: talks to a real Redis / PostgreSQL / worker processes (slower)"
    )
    config.addinivalue_line(
        "markers",
        "docpipe_stack(settings=None, persistent=False, postgres=False): how the "
        "docpipe_stack fixture builds the private stack",
    )


def _is_scenario_file(path: Path, config: pytest.Config) -> bool:
    if path.suffix not in (".yaml", ".yml"):
        return False
    patterns: list[str] = config.getini("docpipe_scenarios")
    posix = path.as_posix()
    return any(fnmatch.fnmatch(posix, pattern) for pattern in patterns)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> ScenarioFile | None:
    if _is_scenario_file(file_path, parent.config):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFile(pytest.File):
    """One scenario file: validated at collection, one item per declared mode."""

    def collect(self) -> Iterator[ScenarioItem]:
        from pipeline.harness.scenarios.model import ScenarioError, load_scenario

        try:
            scenario = load_scenario(self.path)
        except ScenarioError as exc:
            raise self.CollectError(str(exc)) from None
        wanted = self.config.getoption("--docpipe-mode")
        for mode in scenario.modes:
            if wanted and mode not in wanted:
                continue
            item: ScenarioItem = ScenarioItem.from_parent(
                self, name=mode, scenario=scenario, mode=mode
            )
            if mode == "broker":
                item.add_marker(pytest.mark.integration)
            yield item


class ScenarioFailed(Exception):
    def __init__(self, report: RunReport) -> None:
        super().__init__(f"scenario {report.scenario} failed in {report.mode} mode")
        self.report = report


class ScenarioItem(pytest.Item):
    """A scenario run in one mode by `pipeline.harness.scenarios.runner.run_scenario`."""

    def __init__(self, *, scenario: Scenario, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        self.mode = mode

    def runtest(self) -> None:
        from pipeline.harness.scenarios.runner import kept_run_folder, run_scenario

        keep = self.config.getoption("--docpipe-keep")
        workdir = kept_run_folder(Path(keep), self.scenario.name, self.mode) if keep else None
        report = run_scenario(self.scenario, self.path, self.mode, workdir=workdir)  # type: ignore[arg-type]
        self.user_properties.append(("docpipe_checks", len(report.checks)))
        if report.skipped:
            pytest.skip(f"{self.scenario.name} ({self.mode}): {report.skipped}")
        if not report.passed:
            raise ScenarioFailed(report)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str:
        if isinstance(excinfo.value, ScenarioFailed):
            return format_report(excinfo.value.report)
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"scenario {self.scenario.name} [{self.mode}]"


def format_report(report: RunReport) -> str:
    """A failed run as plain text: the error, then every check (failures first)."""
    lines = [
        f"scenario {report.scenario} FAILED in {report.mode} mode "
        f"(seed {report.seed}, {report.elapsed_s:.2f} s)"
    ]
    if report.error:
        lines.append(f"error: {report.error}")
    failed = [c for c in report.checks if not c.passed]
    passed = [c for c in report.checks if c.passed]
    width = max((len(c.name) for c in report.checks), default=0)
    for check in [*failed, *passed]:
        mark = "ok  " if check.passed else "FAIL"
        lines.append(
            f"  {mark} {check.kind:<11} {check.name:<{width}}  "
            f"expected {check.expected}; measured {check.measured}"
        )
    for document in report.documents:
        if document.error:
            lines.append(f"  document {document.name}: {document.status}: {document.error}")
    lines.append(f"replay: {report.replay}")
    if report.workdir:
        lines.append(f"run folder kept: {report.workdir}")
    else:
        lines.append("keep the run folder (database, blobs, worker logs) with --docpipe-keep DIR")
    return "\n".join(lines)


# --- fixtures: the private stack -------------------------------------------------------------


@pytest.fixture(scope="session")
def docpipe_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port for the whole session (never 6379)."""
    from pipeline.harness.localstack import start_redis

    server = start_redis(tmp_path_factory.mktemp("docpipe-redis"))
    yield server
    server.stop()


@pytest.fixture
def docpipe_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrivateStack]:
    """A started `PrivateStack` (Redis and database; call `start_workers()` for workers).

    `@pytest.mark.docpipe_stack(settings={...}, persistent=True, postgres=True)`
    configures it; `postgres=True` needs an admin URL in DOCPIPE_SCENARIO_POSTGRES_URL
    (a throw-away database is created there and dropped) and skips the test without one.
    """
    from pipeline.testing.stack import PrivateStack

    marker = request.node.get_closest_marker("docpipe_stack")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    admin_url = None
    if options.pop("postgres", False):
        admin_url = os.environ.get(POSTGRES_ENV)
        if not admin_url:
            pytest.skip(f"needs PostgreSQL: set {POSTGRES_ENV} to an admin URL")
    stack = PrivateStack(
        tmp_path / "stack",
        settings=options.pop("settings", None),
        persistent=bool(options.pop("persistent", False)),
        postgres_admin_url=admin_url,
    )
    if options:
        raise pytest.UsageError(f"docpipe_stack marker: unknown options {sorted(options)}")
    with stack:
        yield stack
