"""Broker-mode stacks stopped in the background: every stop waited for, every failure named."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pipeline.errors import ConfigurationError
from pipeline.harness.scenarios.model import load_scenario
from pipeline.harness.scenarios.real_workers import BackgroundStops
from pipeline.harness.scenarios.runner import run_scenario
from tests.helpers import BROKER_SCENARIO_FILES


def test_wait_returns_once_every_stop_ran() -> None:
    stops = BackgroundStops()
    release = threading.Event()
    done: list[str] = []
    stops.start("slow", lambda: (release.wait(5), done.append("slow")))
    stops.start("quick", lambda: done.append("quick"))
    release.set()

    stops.wait(timeout_s=5)

    assert sorted(done) == ["quick", "slow"]
    stops.wait(timeout_s=0.1)  # nothing left: nothing to wait for


def test_wait_names_the_stops_that_failed_or_hung() -> None:
    stops = BackgroundStops()
    never = threading.Event()

    def broken() -> None:
        raise OSError("redis-server did not exit")

    stops.start("broken", broken)
    stops.start("hung", lambda: never.wait(5))
    stops.start("fine", lambda: None)

    with pytest.raises(ConfigurationError) as raised:
        stops.wait(timeout_s=0.2)

    message = str(raised.value)
    assert "broken: OSError: redis-server did not exit" in message
    assert "hung: still stopping after 0.2 s" in message
    assert "fine" not in message
    never.set()


def test_a_background_stop_needs_a_folder_that_outlives_the_run() -> None:
    path: Path = BROKER_SCENARIO_FILES[0]
    with pytest.raises(ValueError, match="workdir"):
        run_scenario(load_scenario(path), path, "broker", stop_in_background=True)
