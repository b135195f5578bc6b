"""`docpipe soak` end to end, briefly: a private stack, samples, a verdict, the report files.

Half a minute is too short to judge growth (the verdict may go either way on
a loaded machine); what is checked is that the command runs the layout,
documents complete, every kind of series is sampled, no key lacks a TTL, and
the JSON, CSV and PNG are written.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import docpipe

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]


def test_a_short_soak_runs_end_to_end_and_writes_its_report(tmp_path: Path) -> None:
    report = tmp_path / "report"
    result = docpipe(
        tmp_path,
        "soak",
        "--duration",
        "30",  # 12 s completed none next to the rest of `make test` on a slow day
        "--warmup",
        "3",
        "--sample-every",
        "1",
        "--rate",
        "30",
        "--variants",
        "4",
        "--report",
        str(report),
        "--json",
        real_process=True,  # its worker processes and signal handling, as a user runs it
    )

    assert result.returncode in (0, 1), result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["documents"]["completed"] >= 3
    assert summary["documents"]["submit_errors"] == []
    assert summary["redis"]["unexpected_keys_without_ttl_max"] == 0
    assert summary["redis"]["families"]["docpipe:deliveries"]["keys_end"] > 0
    assert set(summary["workers"]) == {"ocr", "text", "entity", "graph"}
    assert summary["workers"]["ocr"]["processes"] == 3  # prefork: main + 2 pool children
    assert summary["projection"]["families"]["docpipe:deliveries"]["keys"] > 0
    assert summary["passed"] == (result.returncode == 0) == (summary["failures"] == [])
    with (report / "soak_samples.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 8
    assert {"redis_used_memory_kb", "rss_mb:ocr", "fds:entity", "rows:source_documents"} <= set(
        rows[0]
    )
    with (report / "soak_processes.csv").open() as handle:
        processes = list(csv.DictReader(handle))
    assert {(r["worker"], r["role"]) for r in processes} >= {("ocr", "main"), ("ocr", "child")}
    assert (report / "soak.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((report / "soak.json").read_text())["passed"] == summary["passed"]
