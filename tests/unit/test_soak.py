"""`docpipe soak`: the slope fit, the bounds, the projection and the sampler (fakeredis, SQLite)."""

from __future__ import annotations

import json
import math
import os
import sqlite3
from pathlib import Path

import fakeredis
import pytest

from pipeline.app.intake import submit_file
from pipeline.bootstrap import build_services
from pipeline.harness.layout import parse_layout
from pipeline.harness.perf.soak import (
    KOMBU_BOOKKEEPING,
    Sample,
    Sampler,
    SoakBounds,
    checks,
    configured_ttls,
    generate_variants,
    json_ready,
    key_family,
    keys_per_document,
    process_tree,
    project_family,
    scan_families,
    slope_per_minute,
    unacked_scheduled,
    worker_queues,
)
from pipeline.library import SAMPLES
from tests.conftest import embedded_settings

MINUTE = 60.0


def healthy_run(minutes: int = 10, every_s: float = 5.0) -> list[Sample]:
    """A run that behaves: documents flow, keys with a TTL grow with them, nothing else grows."""
    samples = []
    for n in range(int(minutes * MINUTE / every_s) + 1):
        t = n * every_s
        done = t / MINUTE * 30  # 30 documents a minute
        samples.append(
            {
                "t_s": t,
                "documents_completed": done,
                "documents_in_flight": 3.0 + (n % 3),  # jitters, does not grow
                "keys:docpipe:deliveries": 7 * done,
                "keys:doc:state": done,
                "keys:docpipe:lock": float(n % 4),
                "keys:unacked": 1.0,
                "queue:text": float(n % 2),
                "unacked": 2.0,
                "unexpected_keys_without_ttl": 0.0,
                "redis_unexplained_memory_kb": 900.0 + (n % 5),
                "redis_connected_clients": 40.0,
                "db_connections": 12.0,
                "rss_mb:ocr": 250.0 + (n % 3) * 0.5,
                "fds:ocr": 70.0,
            }
        )
    return samples


def failed(results: list[object]) -> list[str]:
    return [c.series for c in results if not c.passed]  # type: ignore[attr-defined]


# --- the fit -----------------------------------------------------------------------------


def test_slope_of_a_straight_line_is_its_rise_per_minute() -> None:
    times = [0.0, 30.0, 60.0, 90.0, 120.0]
    assert slope_per_minute(times, [10 + 3 * t / MINUTE for t in times]) == pytest.approx(3.0)


def test_slope_of_noise_around_a_level_is_near_zero() -> None:
    times = [float(t) for t in range(0, 600, 5)]
    values = [100.0 + (1 if i % 2 else -1) for i in range(len(times))]
    assert abs(slope_per_minute(times, values)) < 0.05


def test_slope_needs_two_distinct_times() -> None:
    assert math.isnan(slope_per_minute([5.0], [1.0]))
    assert math.isnan(slope_per_minute([5.0, 5.0], [1.0, 2.0]))


# --- the bounds --------------------------------------------------------------------------


def test_a_healthy_run_passes_every_bound() -> None:
    results = checks(healthy_run(), 120.0, SoakBounds())
    assert failed(results) == []
    assert {"rss_mb:ocr", "fds:ocr", "queue:text", "keys:unacked"} <= {c.series for c in results}


def test_worker_rss_growing_beyond_its_bound_fails() -> None:
    samples = healthy_run()
    for sample in samples:
        sample["rss_mb:ocr"] += 3.0 * sample["t_s"] / MINUTE  # 3 MB/min
    assert failed(checks(samples, 120.0, SoakBounds())) == ["rss_mb:ocr"]
    assert failed(checks(samples, 120.0, SoakBounds(worker_rss_mb_per_min=4.0))) == []


def test_growth_during_the_warm_up_alone_is_not_held_against_the_run() -> None:
    samples = healthy_run()
    for sample in samples:
        sample["rss_mb:ocr"] += min(sample["t_s"], 100.0)  # 100 MB while warming up, then flat
    assert failed(checks(samples, 120.0, SoakBounds())) == []
    assert "rss_mb:ocr" in failed(checks(samples, 0.0, SoakBounds()))


def test_one_key_without_a_ttl_fails_the_run() -> None:
    samples = healthy_run()
    samples[-1]["unexpected_keys_without_ttl"] = 1.0
    assert failed(checks(samples, 120.0, SoakBounds())) == ["unexpected_keys_without_ttl"]


def test_a_growing_backlog_and_unexplained_redis_memory_fail() -> None:
    samples = healthy_run()
    for sample in samples:
        sample["documents_in_flight"] += 5 * sample["t_s"] / MINUTE
        sample["redis_unexplained_memory_kb"] += 100 * sample["t_s"] / MINUTE
        sample["keys:unacked"] += 1.0 if sample["t_s"] > 300 else 0.0  # kombu's hash appears
    assert set(failed(checks(samples, 120.0, SoakBounds()))) == {
        "documents_in_flight",
        "redis_unexplained_memory_kb",
    }


def test_the_worker_holding_the_in_memory_graph_may_grow_with_the_documents() -> None:
    samples = healthy_run()
    for sample in samples:
        # 30 documents a minute at 100 KB each: 2.9 MB/min, under 2 + 30 x 160 KB/min.
        sample["rss_mb:graph"] = 90.0 + sample["documents_completed"] * 100 / 1024
    assert failed(checks(samples, 120.0, SoakBounds())) == ["rss_mb:graph"]
    assert failed(checks(samples, 120.0, SoakBounds(), graph_workers=["graph"])) == []
    for sample in samples:
        sample["rss_mb:graph"] += sample["documents_completed"] * 200 / 1024  # 300 KB each
    assert failed(checks(samples, 120.0, SoakBounds(), graph_workers=["graph"])) == ["rss_mb:graph"]


def test_workers_are_named_after_their_queues_and_numbered_when_repeated() -> None:
    layout = parse_layout("ocr:prefork:2 text+graph:threads:4 entity:gevent:50 entity:gevent:50")
    assert worker_queues(layout) == {
        "ocr": ("ocr",),
        "text+graph": ("text", "graph"),
        "entity-2": ("entity",),
        "entity-3": ("entity",),
    }


def test_nan_becomes_null_in_the_json() -> None:
    assert json_ready({"a": [math.nan, 1.0], "b": math.inf}) == {"a": [None, 1.0], "b": None}


def test_a_series_too_short_to_fit_is_not_bounded() -> None:
    samples = healthy_run(minutes=1)
    assert "rss_mb:ocr" in failed(checks(samples, 59.0, SoakBounds()))


# --- keys per document and the projection ---------------------------------------------


def test_keys_per_document_divide_key_growth_by_completions() -> None:
    per_document = keys_per_document(healthy_run(), 120.0)
    assert per_document["docpipe:deliveries"] == pytest.approx(7.0)
    assert per_document["doc:state"] == pytest.approx(1.0)
    assert per_document["docpipe:lock"] == pytest.approx(0.0, abs=0.01)


def test_keys_that_live_until_their_ttl_accumulate_rate_times_lifetime() -> None:
    projection = project_family(
        "docpipe:deliveries",
        docs_per_day=10_000,
        keys_per_document=7.0,
        ttl_s=7 * 86_400,
        observed_max=300,
        bytes_per_key=100,
    )
    assert projection.keys == pytest.approx(490_000)
    assert projection.megabytes == pytest.approx(49.0)


def test_keys_released_before_their_ttl_keep_the_most_seen_at_once() -> None:
    projection = project_family(
        "docpipe:lock",
        docs_per_day=10_000,
        keys_per_document=0.0,
        ttl_s=900,
        observed_max=6,
        bytes_per_key=200,
    )
    assert projection.keys == 6
    assert "released" in projection.basis


def test_the_ttls_are_those_of_the_code_and_the_settings() -> None:
    settings = embedded_settings(Path("/nonexistent"), state_ttl_s=3600)
    ttls = configured_ttls(settings)
    assert ttls["docpipe:deliveries"] == 7 * 86_400
    assert ttls["docpipe:retried"] == 7 * 86_400
    assert ttls["doc:state"] == 3600
    assert ttls["docpipe:cache"] == settings.cache_ttl_s
    assert all(ttls[name] is None for name in KOMBU_BOOKKEEPING)


# --- sampling ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "family"),
    [
        (b"docpipe:deliveries:1f0c-task:0", "docpipe:deliveries"),
        (b"docpipe:retried:1f0c-task:0", "docpipe:retried"),
        (b"doc:state:9b2e", "doc:state"),
        (b"docpipe:fake_ocr:job:abc", "docpipe:fake_ocr:job"),
        (b"docpipe:lock:doc-1:ocr", "docpipe:lock"),
        (b"_kombu.binding.text", "_kombu.binding"),
        (b"_kombu.binding_permanent.text", "_kombu.binding_permanent"),
        (b"_kombu.binding_deadlines", "_kombu.binding_deadlines"),
        (b"unacked", "unacked"),
        (b"unacked_index", "unacked_index"),
        (b"text", "queue"),
        (b"entity\x06\x169", "queue"),
        (b"something:else:entirely", "something:else:*"),
    ],
)
def test_keys_are_counted_by_family(key: bytes, family: str) -> None:
    assert key_family(key) == family


def test_scan_counts_keys_and_those_without_a_ttl_by_family() -> None:
    client = fakeredis.FakeRedis()
    for n in range(25):
        client.set(f"docpipe:deliveries:task-{n}:0", 1, ex=3600)
    client.set("docpipe:deliveries:forgotten:0", 1)  # no TTL: what soak is for
    client.rpush("text", "message")
    families = scan_families(client, count=7)  # several SCAN rounds
    deliveries = families["docpipe:deliveries"]
    assert (deliveries.keys, deliveries.without_ttl) == (26, 1)
    assert 3500 < deliveries.max_ttl_s <= 3600
    assert (families["queue"].keys, families["queue"].without_ttl) == (1, 1)


def test_unacked_messages_with_an_eta_are_counted_as_scheduled() -> None:
    client = fakeredis.FakeRedis()
    waiting = {"headers": {"eta": "2026-12-06T18:00:00+00:00"}, "body": ""}
    running = {"headers": {"eta": None}, "body": ""}
    client.hset("unacked", "tag-1", json.dumps([waiting, "", "text"]))
    client.hset("unacked", "tag-2", json.dumps([running, "", "text"]))
    client.hset("unacked", "tag-3", "not json")
    assert unacked_scheduled(client) == (3, 1)


def test_the_process_tree_of_this_process_includes_itself() -> None:
    assert process_tree(os.getpid())[0] == os.getpid()


def test_the_sampler_reads_redis_the_database_and_the_processes(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    services = build_services(settings)
    try:
        project = services.store.ensure_project("soak")
        submit_file(services, SAMPLES / "affidavit_of_jane_holloway.txt", project)
        services.redis.set("docpipe:deliveries:t:0", 1, ex=60)
        services.redis.set("orphan:key", 1)
        services.redis.rpush("ocr", "message")
        database = sqlite3.connect(tmp_path / "docpipe.db")  # one handle this process holds
        sampler = Sampler(
            [services.redis], settings.database_url, {"me": os.getpid()}, submitted=lambda: 1
        )
        try:
            sample = sampler.sample()
            processes = sampler.process_rows
        finally:
            sampler.close()
            database.close()
    finally:
        services.close()
    assert sample["documents_submitted"] == 1
    assert sample["documents_in_flight"] == 1  # pending: submitted, not yet processed
    assert sample["documents_completed"] == 0
    assert sample["rows:source_documents"] == 1
    assert sample["keys:docpipe:deliveries"] == 1
    assert sample["queue:ocr"] == 1
    assert sample["unexpected_keys_without_ttl"] == 1  # orphan:key; the queue is allowed
    assert sample["rss_mb:me"] > 1
    assert sample["fds:me"] >= 3
    assert sample["db_connections"] >= 1
    rows = [(r["worker"], r["pid"], r["role"]) for r in processes]
    # This test process may have children of its own (a session's redis-server under xdist).
    assert rows[0] == ("me", os.getpid(), "main")
    assert all(role == "child" for _, _, role in rows[1:])


def test_generated_variants_are_distinct_documents_of_each_type(tmp_path: Path) -> None:
    paths = generate_variants(tmp_path, 8, seed=1)
    assert sorted({p.suffix for p in paths}) == [".docx", ".eml", ".pdf", ".txt"]
    assert len({p.read_bytes() for p in paths}) == 8
