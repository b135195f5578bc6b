"""docpipe as a locust target: users submit documents through the intake (broker mode).

Not HTTP: each user stores a file, dispatches it exactly as `docpipe run --broker`
does, then polls the database until the document is terminal. Two request
types reach locust's statistics through `events.request`:

- `submit`: the intake alone (blob write, rows, commit, first task sent);
- `e2e`: from the start of the submit until the document is `completed`
  (a failed, dead-lettered or timed-out document is a failed request).

`docpipe load` runs this file headless as a subprocess (never import locust
in the pytest or docpipe process: it monkey-patches the standard library).
It ships inside the package (the `harness` extra brings locust), so `docpipe
load` works from an install; tests/load/locustfile.py re-exports it for a checkout.
Configuration comes from the environment: the usual DOCPIPE_* settings
(broker, Redis, database, blobs - shared with the workers) plus

- DOCPIPE_LOAD_FILES: the documents, separated by os.pathsep, submitted in turn;
- DOCPIPE_LOAD_POLL_S: database poll interval while waiting (default 0.1 s);
- DOCPIPE_LOAD_E2E_TIMEOUT_S: a document not terminal by then fails (default 120 s).

By hand: `DOCPIPE_... locust -f pipeline/harness/perf/locustfile.py --headless -u 20 -t 30s`
(or `-f tests/load/locustfile.py`, the same user).
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

from locust import User, constant, events, task

FILES = [Path(p) for p in os.environ.get("DOCPIPE_LOAD_FILES", "").split(os.pathsep) if p]
POLL_S = float(os.environ.get("DOCPIPE_LOAD_POLL_S", "0.1"))
E2E_TIMEOUT_S = float(os.environ.get("DOCPIPE_LOAD_E2E_TIMEOUT_S", "120"))

_next_file = itertools.count()
_context: dict[str, Any] = {}


def _services() -> tuple[Any, str]:
    """One set of services for this locust process, built on first use."""
    if "services" not in _context:
        from pipeline.bootstrap import start
        from pipeline.runtime.broker import require_broker_settings
        from pipeline.settings import Settings

        settings = Settings(eager=False)
        require_broker_settings(settings)
        services = start(settings)
        _context["services"] = services
        _context["project"] = services.store.ensure_project(settings.project_name)
    return _context["services"], _context["project"]


# locust's event hooks are untyped (mypy checks this file since it moved into the package).
@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _check_files(environment: Any, **_: Any) -> None:
    if not FILES:
        raise SystemExit("DOCPIPE_LOAD_FILES names no documents")
    _services()


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _close_services(environment: Any, **_: Any) -> None:
    """Release the database pool and Redis connections of this locust process."""
    services = _context.pop("services", None)
    if services is not None:
        from pipeline.bootstrap import use_services

        use_services(None)
        services.close()


def _fire(request_type: str, started: float, exception: BaseException | None = None) -> None:
    events.request.fire(  # type: ignore[no-untyped-call]
        request_type=request_type,
        name="document",
        response_time=(time.perf_counter() - started) * 1000.0,
        response_length=0,
        exception=exception,
        context={},
    )


class DocumentUser(User):
    """Submit a document, wait until it is completed, repeat (a closed loop)."""

    wait_time = constant(0)

    @task
    def submit_until_completed(self) -> None:
        from pipeline.app.intake import submit_and_dispatch

        services, project_uuid = _services()
        path = FILES[next(_next_file) % len(FILES)]
        started = time.perf_counter()
        try:
            submission = submit_and_dispatch(services, path, project_uuid)
        except Exception as exc:
            _fire("submit", started, exc)
            return
        _fire("submit", started)
        document_uuid = submission.document_uuid
        deadline = started + E2E_TIMEOUT_S
        status = None
        while time.perf_counter() < deadline:
            status = services.store.statuses([document_uuid]).get(document_uuid)
            if status is not None and status.is_terminal:
                break
            time.sleep(POLL_S)  # gevent's sleep once locust has patched the process
        if status is not None and status.value == "completed":
            _fire("e2e", started)
        else:
            _fire("e2e", started, RuntimeError(f"document ended {status or 'unknown'}"))
