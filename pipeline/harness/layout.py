"""Worker layouts: which worker processes serve which queues, on which pool, how wide.

One type (`WorkerSpec`) and one syntax for every command that starts or models
workers (`docpipe load`, `docpipe simulate`, broker-mode scenarios, the soak
run) and the Makefile's WORKER_LAYOUT:

    queue[+queue...]:pool:concurrency   items separated by spaces or commas

e.g. the plan's layout `ocr:prefork:2 text:threads:4 entity:gevent:100 graph:threads:4`,
or `ocr:prefork:1 text+entity+graph:threads:4` (one worker serving three queues).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pipeline.domain.models import QUEUES
from pipeline.errors import ConfigurationError

POOLS = ("prefork", "threads", "gevent", "solo")
#: The plan's deployment: OCR on prefork (CPU, time limits enforced), the LLM calls on gevent.
PLAN_LAYOUT = "ocr:prefork:2 text:threads:4 entity:gevent:100 graph:threads:4"


@dataclass(frozen=True)
class WorkerSpec:
    """One worker process: the queues it consumes, its pool and its concurrency."""

    queues: tuple[str, ...]
    pool: str
    concurrency: int

    @property
    def queue(self) -> str:
        """The queue of a single-queue worker."""
        if len(self.queues) != 1:
            raise ValueError(f"worker {self.item} serves {len(self.queues)} queues")
        return self.queues[0]

    @property
    def item(self) -> str:
        """This worker in the layout syntax."""
        return f"{'+'.join(self.queues)}:{self.pool}:{self.concurrency}"


def parse_layout(spec: str, *, every_queue: bool = True) -> list[WorkerSpec]:
    """Parse `queue[+queue...]:pool:N` items; `every_queue` refuses a queue left without workers."""
    layout = [_parse_item(item) for item in spec.replace(",", " ").split()]
    if not layout:
        raise ConfigurationError(
            f"empty worker layout: use queue:pool:N items, e.g. {PLAN_LAYOUT!r}"
        )
    if every_queue:
        missing = sorted(set(QUEUES) - {q for worker in layout for q in worker.queues})
        if missing:
            raise ConfigurationError(f"worker layout leaves queue(s) {missing} unconsumed")
    return layout


def format_layout(layout: Iterable[WorkerSpec]) -> str:
    return " ".join(worker.item for worker in layout)


def concurrency_per_queue(layout: Sequence[WorkerSpec]) -> dict[str, int]:
    """Task slots per queue (a worker serving several queues counts for each)."""
    slots: dict[str, int] = {}
    for worker in layout:
        for queue in worker.queues:
            slots[queue] = slots.get(queue, 0) + worker.concurrency
    return slots


def _parse_item(item: str) -> WorkerSpec:
    if "=" in item:
        raise ConfigurationError(
            f"worker layout item {item!r}: the syntax is queue:pool:N (e.g. text:threads:4)"
        )
    try:
        queues, pool, concurrency = item.split(":")
        worker = WorkerSpec(tuple(queues.split("+")), pool, int(concurrency))
    except ValueError:
        raise ConfigurationError(f"worker layout item {item!r}: use queue:pool:N") from None
    unknown = [q for q in worker.queues if q not in QUEUES]
    if unknown or pool not in POOLS:
        raise ConfigurationError(
            f"worker layout item {item!r}: queues are {', '.join(QUEUES)}; "
            f"pools are {', '.join(POOLS)}"
        )
    if worker.concurrency < 1:
        raise ConfigurationError(f"worker layout item {item!r}: concurrency below 1")
    return worker
