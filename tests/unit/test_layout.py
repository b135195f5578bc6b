"""The one worker-layout syntax (pipeline/harness/layout.py): load, simulate, scenarios."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigurationError
from pipeline.harness.layout import (
    PLAN_LAYOUT,
    WorkerSpec,
    concurrency_per_queue,
    format_layout,
    parse_layout,
)
from pipeline.harness.simulation.predict import Layout


def test_the_plan_layout_round_trips() -> None:
    layout = parse_layout(PLAN_LAYOUT)

    assert layout[2] == WorkerSpec(("entity",), "gevent", 100)
    assert format_layout(layout) == PLAN_LAYOUT


def test_one_worker_may_serve_several_queues() -> None:
    layout = parse_layout("ocr:prefork:1, text+entity+graph:threads:4")

    assert layout[1].queues == ("text", "entity", "graph")
    assert concurrency_per_queue(layout) == {"ocr": 1, "text": 4, "entity": 4, "graph": 4}
    with pytest.raises(ValueError, match="serves 3 queues"):
        _ = layout[1].queue


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("ocr=2,text=4,entity=100,graph=4", "the syntax is queue:pool:N"),
        ("ocr:prefork:2 text:threads:4", r"leaves queue\(s\) \['entity', 'graph'\]"),
        ("ocr:fork:2 text+entity+graph:threads:4", "pools are prefork"),
        ("ocr:prefork:0 text+entity+graph:threads:4", "concurrency below 1"),
        ("", "empty worker layout"),
    ],
)
def test_a_wrong_layout_says_what_is_wrong(spec: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        parse_layout(spec)


def test_capacity_planning_reads_the_same_syntax_and_keeps_the_pools() -> None:
    layout = Layout.parse(PLAN_LAYOUT)

    assert layout.with_more("text", 2).spec() == PLAN_LAYOUT.replace(
        "threads:4 entity", "threads:6 entity"
    )
    with pytest.raises(ValueError, match="one queue per worker"):
        Layout.parse("ocr:prefork:1 text+entity+graph:threads:4")
