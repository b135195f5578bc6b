"""What explore may generate: read from the scenario schema, never listed here.

The ports, their operations and fault kinds are the scenario model's fault
catalogue (`FAULT_CATALOGUE`, port -> operation -> kinds), and which of them
sim mode injects is its `fault_modes`; the disruptions are the `Disruption`
model's kinds that the runner runs in sim mode (`sim_skip_reason`). A kind
or port added to the schema is generated as soon as sim mode runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

from pipeline.harness.scenarios import model
from pipeline.harness.scenarios.runner import sim_skip_reason


@dataclass(frozen=True)
class FaultOption:
    """One (port, kind) pair explore can enable, with the operations it can target."""

    port: str
    kind: str
    operations: tuple[str, ...]
    #: The fault can be limited to one document (the port's fake knows the document).
    document_aware: bool

    @property
    def label(self) -> str:
        return f"{self.port}.{self.kind}"


@dataclass(frozen=True)
class DisruptionOption:
    kind: str


@dataclass(frozen=True)
class Catalogue:
    faults: tuple[FaultOption, ...]
    disruptions: tuple[DisruptionOption, ...]

    def pairs(self) -> list[str]:
        return [option.label for option in self.faults] + [
            f"process.{option.kind}" for option in self.disruptions
        ]


def _literal_values(annotation: Any) -> tuple[str, ...]:
    values: list[str] = []
    for arg in get_args(annotation):
        if isinstance(arg, str):
            values.append(arg)
        else:
            values.extend(_literal_values(arg))
    return tuple(values)


def _sim_runs_disruption(kind: str) -> bool:
    """Whether sim mode runs a scenario with this disruption (asks the runner, not a list)."""
    try:
        probe = model.Scenario.model_validate(
            {
                "name": "probe",
                "description": "catalogue probe",
                "modes": ["broker"],
                "documents": [{"generate": {"type": "txt"}}],
                "disruptions": [{"kind": kind, "at_s": 0, "down_s": 1}],
            }
        )
    except Exception:  # the schema asks for more than a kind and times: not generated
        return False
    return sim_skip_reason(probe) is None


def sim_catalogue() -> Catalogue:
    """Every (port, kind) of the fault catalogue that sim mode injects, and such disruptions."""
    faults = []
    for port, operations in model.FAULT_CATALOGUE.items():
        kinds = sorted({kind for supported in operations.values() for kind in supported})
        for kind in kinds:
            if "sim" not in model.fault_modes(port, None, kind):
                continue
            faults.append(
                FaultOption(
                    port=port,
                    kind=kind,
                    operations=tuple(
                        operation
                        for operation, supported in operations.items()
                        if kind in supported and "sim" in model.fault_modes(port, operation, kind)
                    ),
                    document_aware=port in model.DOCUMENT_AWARE_PORTS,
                )
            )
    disruption_kinds = _literal_values(model.Disruption.model_fields["kind"].annotation)
    disruptions = tuple(
        DisruptionOption(kind) for kind in disruption_kinds if _sim_runs_disruption(kind)
    )
    return Catalogue(faults=tuple(faults), disruptions=disruptions)


def declared_modes(faults: list[dict[str, Any]], disruptions: list[dict[str, Any]]) -> list[str]:
    """The modes a scenario with these faults can declare: eager and broker where every
    fault is injected there too (the file then replays on real workers), else sim only."""
    modes = {"eager", "broker"}
    for fault in faults:
        modes &= set(model.fault_modes(fault["port"], fault.get("operation"), fault["kind"]))
    if disruptions:
        modes &= {"broker"}
    return sorted(modes) or ["sim"]
