"""Random fault schedules (swarm testing) as scenario data, from one seeded RNG per schedule.

Swarm testing (Groce et al., 2012): rather than every fault kind at once at
low rates, each schedule enables a random subset of the catalogue's (port,
kind) pairs with random rates, windows and instants, so a defect that one
kind masks (an LLM outage hiding a stale-delivery race) still meets the
schedule that leaves it alone. Schedule `index` of seed `seed` depends on
those two numbers only (its own `random.Random`), never on how many ran
before it or how long they took.

A schedule is the plain data of a scenario file (`pipeline.harness.scenarios.model`):
what is run, shrunk and written is one and the same thing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.harness.explore.catalogue import Catalogue, FaultOption, declared_modes

#: Settings that make deliveries overlap (a call outliving the visibility timeout), valid
#: together (scenarios/stalled_call_outlives_visibility_timeout.yaml has the reasoning).
SHORT_VISIBILITY: dict[str, Any] = {
    "visibility_timeout_s": 5,
    "task_soft_time_limit_s": 2,
    "task_time_limit_s": 3,
    "retry_backoff_max_s": 1,
    "openai_timeout_s": 1.5,
    "aws_connect_timeout_s": 0.5,
    "aws_read_timeout_s": 1,
    "neo4j_timeout_s": 1.5,
    "ocr_local": False,
    "broker_restore_interval_s": 1,
    "broker_restore_throttle": 1,
}

#: Virtual seconds in which windows and disruptions are placed (a few documents take
#: a few virtual seconds without faults, tens with retries).
HORIZON_S = 20.0


def schedule_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"docpipe-explore:{seed}:{index}")


def generate_schedule(
    seed: int,
    index: int,
    documents: Sequence[str],
    catalogue: Catalogue,
    *,
    max_documents: int = 3,
) -> dict[str, Any]:
    """Schedule `index` of `seed`: a scenario mapping over some of `documents` (relative paths)."""
    rng = schedule_rng(seed, index)
    count = rng.randint(1, min(max_documents, len(documents)))
    chosen = rng.sample(list(documents), count)
    names = [Path(path).name for path in chosen]

    settings: dict[str, Any] = {}
    if rng.random() < 0.5:
        settings["max_retries"] = rng.choice([0, 1, 2, 3])
    if rng.random() < 0.3:
        settings["max_redeliveries"] = rng.choice([1, 2])
    if rng.random() < 0.4:
        settings.update(SHORT_VISIBILITY)

    # Swarm: a random subset of the catalogue, each pair with its own rate (at least one).
    options = list(catalogue.faults)
    enabled = rng.sample(options, min(len(options), rng.choice([1, 2, 3, 4, 6, 8])))
    share = len(enabled) / len(options)
    faults = [
        _fault(rng, option, names, settings)
        for option in enabled
        for _ in range(rng.choice([1, 1, 2]))
    ]
    disruptions = [
        {
            "kind": option.kind,
            "at_s": round(rng.uniform(0, HORIZON_S / 2), 1),
            "down_s": round(rng.uniform(0.5, HORIZON_S / 2), 1),
        }
        for option in catalogue.disruptions
        if rng.random() < share
    ]
    scenario: dict[str, Any] = {
        "name": f"explore-{seed}-{index}",
        "description": f"docpipe explore --seed {seed}: schedule {index}",
        "seed": rng.randrange(1 << 16),
        "modes": declared_modes(faults, disruptions),
        "documents": [{"files": [path]} for path in chosen],
    }
    if settings:
        scenario["settings"] = settings
    scenario["faults"] = faults
    if disruptions:
        scenario["disruptions"] = disruptions
    return scenario


def _fault(
    rng: random.Random, option: FaultOption, names: list[str], settings: dict[str, Any]
) -> dict[str, Any]:
    fault: dict[str, Any] = {"port": option.port}
    if option.operations and rng.random() < 0.4:
        fault["operation"] = rng.choice(option.operations)
    fault["kind"] = option.kind
    trigger = rng.choice(["probability", "probability", "first", "every"])
    if trigger == "probability":
        fault["probability"] = round(rng.uniform(0.05, 0.7), 2)
    elif trigger == "first":
        fault["first"] = rng.randint(1, 3)
    else:
        fault["every"] = rng.randint(2, 4)
    if rng.random() < 0.3:
        start = round(rng.uniform(0, HORIZON_S / 2), 1)
        fault["window"] = [start, round(start + rng.uniform(0.5, HORIZON_S), 1)]
    if option.document_aware and rng.random() < 0.3:
        fault["documents"] = [rng.choice(names)]
    if option.kind in ("latency", "timeout"):
        # Past the visibility timeout now and then, when it is short (overlapping deliveries).
        if "visibility_timeout_s" in settings and rng.random() < 0.5:
            fault["latency_s"] = round(rng.uniform(6.0, 15.0), 1)
        else:
            fault["latency_s"] = round(rng.uniform(0.1, 4.0), 1)
    if option.kind == "throttle" and rng.random() < 0.5:
        fault["retry_after_s"] = round(rng.uniform(0, 3), 1)
    # A generated fault need not fire: coverage is the fixed scenarios' invariant, not ours.
    fault["fired"] = {"min": 0}
    return fault
