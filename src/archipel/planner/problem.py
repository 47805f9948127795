"""The planning problem as plain data: each step's feasible options with their costs, and why other sites are out.

Building a :class:`Problem` is the service layer's work (it reads the workspace, the catalog, the metadata store
and asks the policy engine); solving it is :func:`archipel.planner.solve.plan`, which reads nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["GIB", "Edge", "InputMove", "Option", "Problem", "Rejection", "StepProblem"]

GIB = 2**30
GB = 10**9

RejectionKind = Literal["policy", "no_offer", "capacity", "health", "constraint", "budget", "disabled"]


@dataclass(frozen=True)
class InputMove:
    """One input that must travel to the candidate site, and what that costs."""

    input: str
    ref: str
    source_site: str
    bytes: int
    usd_per_gb: float

    @property
    def usd(self) -> float:
        return self.bytes / GB * self.usd_per_gb

    def as_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "ref": self.ref,
            "from": self.source_site,
            "bytes": self.bytes,
            "usd_per_gb": self.usd_per_gb,
            "usd": round(self.usd, 6),
        }


@dataclass(frozen=True)
class Option:
    """A feasible placement of one step: site, offer, spot or not, and every cost term."""

    site: str
    offer: str
    spot: bool
    nodes: int
    hourly_usd: float
    """All nodes together, per hour."""
    hours: float
    """Expected run time before rework."""
    risk_hours: float = 0.0
    """Expected rework from preemptions (spot only)."""
    moves: tuple[InputMove, ...] = ()
    transfer_hours: float = 0.0
    """Expected time to bring the inputs in."""

    @property
    def compute_usd(self) -> float:
        return self.hourly_usd * self.hours

    @property
    def risk_usd(self) -> float:
        return self.hourly_usd * self.risk_hours

    @property
    def egress_usd(self) -> float:
        return sum(m.usd for m in self.moves)

    @property
    def total_usd(self) -> float:
        return self.compute_usd + self.risk_usd + self.egress_usd

    @property
    def total_hours(self) -> float:
        return self.hours + self.risk_hours + self.transfer_hours

    def as_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "offer": self.offer,
            "spot": self.spot,
            "nodes": self.nodes,
            "hourly_usd": round(self.hourly_usd, 6),
            "hours": round(self.hours, 4),
            "compute_usd": round(self.compute_usd, 6),
            "risk_usd": round(self.risk_usd, 6),
            "egress_usd": round(self.egress_usd, 6),
            "total_usd": round(self.total_usd, 6),
            "total_hours": round(self.total_hours, 4),
            "moves": [m.as_json() for m in self.moves],
        }


@dataclass(frozen=True)
class Rejection:
    """Why a site (or one of its offers) cannot take a step."""

    site: str
    kind: RejectionKind
    detail: str
    rule: str | None = None
    """The policy rule (kind ``policy``) or budget (kind ``budget``) that decided."""
    would_cost_usd: float | None = None
    """What the site's best offer would have cost (compute + input egress), where it has one: the price of
    the rule."""

    def as_json(self) -> dict[str, Any]:
        out = {"site": self.site, "kind": self.kind, "rule": self.rule, "detail": self.detail}
        if self.would_cost_usd is not None:
            out["would_cost_usd"] = round(self.would_cost_usd, 6)
        return out


@dataclass(frozen=True)
class StepProblem:
    name: str
    options: tuple[Option, ...]
    rejections: tuple[Rejection, ...] = ()
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Edge:
    """Bytes that step ``src`` hands to step ``dst``; they cost egress when the two run at different sites."""

    src: str
    dst: str
    bytes: int


@dataclass(frozen=True)
class Problem:
    steps: tuple[StepProblem, ...]
    edges: tuple[Edge, ...] = ()
    egress_per_gb: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """USD per GB from one site to another; pairs not listed (and a site to itself) cost nothing."""
    transfer_hours_per_gb: Mapping[tuple[str, str], float] = field(default_factory=dict)
    objective: Literal["cost", "time"] = "cost"
    budget_usd: float | None = None
    """The hard limit left for this plan (the tightest matching budget's remaining amount), if any."""
    budget_name: str | None = None

    def step(self, name: str) -> StepProblem:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def edge_weight(self, edge: Edge, src_site: str, dst_site: str) -> float:
        """What moving the edge's bytes between two sites adds to the objective."""
        if src_site == dst_site:
            return 0.0
        table = self.egress_per_gb if self.objective == "cost" else self.transfer_hours_per_gb
        return edge.bytes / GB * table.get((src_site, dst_site), 0.0)

    def option_weight(self, option: Option) -> float:
        return option.total_usd if self.objective == "cost" else option.total_hours
