"""Solvers: an exact MILP (scipy's HiGHS), a greedy pass for huge problems, and brute force for tests.

``plan(problem)`` is pure: it reads only the problem, prints nothing and returns a :class:`Plan` whose
explanation is data (ranked options per step, rejections, every cost term).

The MILP: a binary ``x[s,o]`` per step and option, one per step; for every edge ``a → b`` a continuous
``y[i,j] >= 0`` per pair of sites, constrained like a transportation problem (row sums equal ``a``'s site choice,
column sums ``b``'s), so with integral ``x`` exactly ``y[site(a), site(b)] = 1``; the objective adds the options'
own weights and ``y`` times the edge's egress (or transfer time). A hard budget is one more row. The LP
relaxation is solved first and accepted when its rounded choice is provably optimal (it usually is: the edge
rows are a transportation polytope); otherwise HiGHS branches.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from archipel.errors import NoCapacity, PolicyViolation
from archipel.planner.problem import GB, Edge, Option, Problem, Rejection

__all__ = ["Placement", "Plan", "brute_force", "greedy", "plan", "solve_milp"]

Choice = dict[str, Option]


@dataclass(frozen=True)
class Placement:
    step: str
    chosen: Option
    ranked: tuple[Option, ...]
    """Every feasible option, best first (by the objective, this step alone, parents as placed)."""
    rejections: tuple[Rejection, ...]
    incoming_usd: tuple[float, ...] = ()
    """Parallel to ``ranked``: egress of the parents' outputs to that option's site."""

    def cost_of(self, option: Option) -> float:
        """The option's total including its parents' step egress (what choosing it would add to the plan)."""
        return option.total_usd + self.incoming_usd[self.ranked.index(option)]

    def as_json(self, limit: int = 10) -> dict[str, Any]:
        return {
            "step": self.step,
            "chosen": self.chosen.as_json(),
            "alternatives": [
                {
                    **o.as_json(),
                    "step_egress_usd": round(self.cost_of(o) - o.total_usd, 6),
                    "delta_usd": round(self.cost_of(o) - self.cost_of(self.chosen), 6),
                }
                for o in self.ranked[:limit]
                if o != self.chosen
            ],
            "rejections": [r.as_json() for r in self.rejections],
        }


@dataclass(frozen=True)
class StepMove:
    src: str
    dst: str
    src_site: str
    dst_site: str
    bytes: int
    usd: float


@dataclass(frozen=True)
class Plan:
    objective: str
    solver: str
    placements: tuple[Placement, ...]
    step_moves: tuple[StepMove, ...]
    seconds: float
    budget_usd: float | None = None
    budget_name: str | None = None
    breakdown: dict[str, float] = field(default_factory=dict)

    def placement(self, step: str) -> Placement:
        return next(p for p in self.placements if p.step == step)

    @property
    def total_usd(self) -> float:
        return sum(self.breakdown.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "solver": self.solver,
            "total_usd": round(self.total_usd, 6),
            "breakdown": {k: round(v, 6) for k, v in self.breakdown.items()},
            "budget": {"name": self.budget_name, "remaining_usd": self.budget_usd}
            if self.budget_name
            else None,
            "steps": [p.as_json() for p in self.placements],
            "step_egress": [
                {
                    "from": m.src,
                    "to": m.dst,
                    "from_site": m.src_site,
                    "to_site": m.dst_site,
                    "bytes": m.bytes,
                    "usd": round(m.usd, 6),
                }
                for m in self.step_moves
            ],
            "solve_seconds": round(self.seconds, 4),
        }


def _objective(problem: Problem, choice: Choice) -> float:
    total = sum(problem.option_weight(o) for o in choice.values())
    for edge in problem.edges:
        total += problem.edge_weight(edge, choice[edge.src].site, choice[edge.dst].site)
    return total


def _usd(problem: Problem, choice: Choice) -> float:
    total = sum(o.total_usd for o in choice.values())
    for edge in problem.edges:
        a, b = choice[edge.src].site, choice[edge.dst].site
        if a != b:
            total += edge.bytes / GB * problem.egress_per_gb.get((a, b), 0.0)
    return total


def _check_feasible(problem: Problem) -> None:
    for step in problem.steps:
        if not step.options:
            reasons = "; ".join(f"{r.site}: {r.detail}" for r in step.rejections) or "no site can run it"
            policy = [r for r in step.rejections if r.kind == "policy"]
            message = f"no site can run step {step.name}: {reasons}"
            if policy and len(policy) == len({r.site for r in step.rejections}):
                raise PolicyViolation(message, rule=policy[0].rule, reason=policy[0].detail)
            raise NoCapacity(message)


def brute_force(problem: Problem) -> Choice:
    """Every combination; for tests and tiny problems only."""
    names = [s.name for s in problem.steps]
    best: tuple[float, Choice] | None = None
    for combo in itertools.product(*(s.options for s in problem.steps)):
        choice = dict(zip(names, combo, strict=True))
        if problem.budget_usd is not None and _usd(problem, choice) > problem.budget_usd + 1e-9:
            continue
        value = _objective(problem, choice)
        if best is None or value < best[0] - 1e-12:
            best = (value, choice)
    if best is None:
        raise _over_budget(problem)
    return best[1]


def greedy(problem: Problem) -> Choice:
    """Steps in order (parents first); each takes its best option given where its parents already are."""
    choice: Choice = {}
    incoming: dict[str, list[Edge]] = {}
    for edge in problem.edges:
        incoming.setdefault(edge.dst, []).append(edge)
    for step in _topological(problem):

        def cost(option: Option, step: str = step) -> float:
            return problem.option_weight(option) + sum(
                problem.edge_weight(e, choice[e.src].site, option.site) for e in incoming.get(step, [])
            )

        choice[step] = min(problem.step(step).options, key=cost)
    if problem.budget_usd is not None and _usd(problem, choice) > problem.budget_usd + 1e-9:
        raise _over_budget(problem)
    return choice


def _topological(problem: Problem) -> list[str]:
    order: list[str] = []
    pending = {
        s.name: set(s.needs) | {e.src for e in problem.edges if e.dst == s.name} for s in problem.steps
    }
    while pending:
        ready = [n for n, deps in pending.items() if deps <= set(order)]
        if not ready:
            raise ValueError(f"steps form a cycle: {', '.join(sorted(pending))}")
        order.extend(ready)
        for name in ready:
            del pending[name]
    return order


def _over_budget(problem: Problem) -> PolicyViolation:
    return PolicyViolation(
        f"every feasible plan costs more than the ${problem.budget_usd:.2f} left in budget {problem.budget_name}",
        rule=f"budget:{problem.budget_name}",
        reason="budget",
    )


def solve_milp(problem: Problem) -> Choice:
    """The exact optimum with HiGHS through ``scipy.optimize.milp``."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, linprog, milp
    from scipy.sparse import coo_array

    cost: list[float] = []
    usd: list[float] = []
    integrality: list[int] = []
    x_index: dict[tuple[str, int], int] = {}
    for step in problem.steps:
        for k, option in enumerate(step.options):
            x_index[(step.name, k)] = len(cost)
            cost.append(problem.option_weight(option))
            usd.append(option.total_usd)
            integrality.append(1)
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lower: list[float] = []
    upper: list[float] = []

    def add_row(entries: Sequence[tuple[int, float]], lo: float, hi: float) -> None:
        r = len(lower)
        for col, val in entries:
            rows.append(r)
            cols.append(col)
            vals.append(val)
        lower.append(lo)
        upper.append(hi)

    for step in problem.steps:
        add_row([(x_index[(step.name, k)], 1.0) for k in range(len(step.options))], 1.0, 1.0)

    def by_site(step_name: str) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for k, option in enumerate(problem.step(step_name).options):
            out.setdefault(option.site, []).append(x_index[(step_name, k)])
        return out

    for edge in problem.edges:
        src_sites, dst_sites = by_site(edge.src), by_site(edge.dst)
        if all(problem.edge_weight(edge, i, j) == 0 for i in src_sites for j in dst_sites):
            continue
        y: dict[tuple[str, str], int] = {}
        for i in src_sites:
            for j in dst_sites:
                y[(i, j)] = len(cost)
                cost.append(problem.edge_weight(edge, i, j))
                usd.append(edge.bytes / GB * problem.egress_per_gb.get((i, j), 0.0) if i != j else 0.0)
                integrality.append(0)
        for i, xs in src_sites.items():
            add_row([(y[(i, j)], 1.0) for j in dst_sites] + [(x, -1.0) for x in xs], 0.0, 0.0)
        for j, xs in dst_sites.items():
            add_row([(y[(i, j)], 1.0) for i in src_sites] + [(x, -1.0) for x in xs], 0.0, 0.0)
    if problem.budget_usd is not None:
        add_row([(c, v) for c, v in enumerate(usd) if v], -np.inf, problem.budget_usd + 1e-9)

    n = len(cost)
    matrix = coo_array((vals, (rows, cols)), shape=(len(lower), n)).tocsr()
    c, lo, hi = np.array(cost), np.array(lower), np.array(upper)

    def decode(x: Any) -> Choice:
        choice: Choice = {}
        for step in problem.steps:
            k = max(range(len(step.options)), key=lambda k: x[x_index[(step.name, k)]])
            choice[step.name] = step.options[k]
        return choice

    # The LP relaxation is usually integral here (the edge rows form a transportation polytope): solve it first,
    # and accept its answer when the rounded choice is provably optimal (integral, or as good as the LP bound).
    relaxed = linprog(c, bounds=(0, 1), method="highs", **_as_inequalities(matrix, lo, hi))
    if relaxed.status == 2:  # infeasible even fractionally: only the budget row can make it so
        raise _over_budget(problem)
    if relaxed.status == 0:
        choice = decode(relaxed.x)
        within = problem.budget_usd is None or _usd(problem, choice) <= problem.budget_usd + 1e-9
        if within and _objective(problem, choice) <= relaxed.fun + 1e-9 * max(1.0, abs(relaxed.fun)):
            return choice
    result = milp(
        c=c,
        constraints=LinearConstraint(matrix, lo, hi),
        integrality=np.array(integrality),
        bounds=Bounds(np.zeros(n), np.ones(n)),
        options={"mip_rel_gap": 1e-9},  # "exact": HiGHS would otherwise stop within 0.01 %
    )
    if result.status == 2 or result.x is None:  # infeasible: only the budget row can make it so
        raise _over_budget(problem)
    return decode(result.x)


def _as_inequalities(matrix: Any, lo: Any, hi: Any) -> dict[str, Any]:
    """``lo <= A x <= hi`` as linprog's ``A_eq``/``A_ub`` arguments."""
    import numpy as np
    from scipy.sparse import vstack

    eq = lo == hi
    upper = ~eq & np.isfinite(hi)
    lower = ~eq & np.isfinite(lo)
    parts, bounds = [], []
    if upper.any():
        parts.append(matrix[upper])
        bounds.append(hi[upper])
    if lower.any():
        parts.append(-matrix[lower])
        bounds.append(-lo[lower])
    out: dict[str, Any] = {"A_eq": matrix[eq], "b_eq": lo[eq]}
    if parts:
        out["A_ub"] = vstack(parts).tocsr()
        out["b_ub"] = np.concatenate(bounds)
    return out


def plan(
    problem: Problem,
    solver: Literal["auto", "milp", "greedy", "brute"] = "auto",
    *,
    greedy_above: int = 200_000,
) -> Plan:
    """Place every step. ``auto`` uses the MILP unless the problem has more than ``greedy_above`` variables."""
    started = time.perf_counter()
    _check_feasible(problem)
    if solver == "auto":
        size = sum(len(s.options) for s in problem.steps) + sum(
            len({o.site for o in problem.step(e.src).options})
            * len({o.site for o in problem.step(e.dst).options})
            for e in problem.edges
        )
        solver = "milp" if size <= greedy_above else "greedy"
    solve = {"milp": solve_milp, "greedy": greedy, "brute": brute_force}[solver]
    choice = solve(problem)
    return _explain(problem, choice, solver, time.perf_counter() - started)


def _explain(problem: Problem, choice: Choice, solver: str, seconds: float) -> Plan:
    incoming_edges: dict[str, list[Edge]] = {}
    for edge in problem.edges:
        incoming_edges.setdefault(edge.dst, []).append(edge)
    placements = []
    for step in problem.steps:

        def local(option: Option, name: str = step.name) -> float:
            return problem.option_weight(option) + sum(
                problem.edge_weight(e, choice[e.src].site, option.site) for e in incoming_edges.get(name, [])
            )

        ranked = tuple(sorted(step.options, key=lambda o: (local(o), o.site, o.offer, o.spot)))
        incoming = tuple(
            sum(
                e.bytes / GB * problem.egress_per_gb.get((choice[e.src].site, o.site), 0.0)
                for e in incoming_edges.get(step.name, [])
                if choice[e.src].site != o.site
            )
            for o in ranked
        )
        placements.append(Placement(step.name, choice[step.name], ranked, step.rejections, incoming))
    moves = []
    for edge in problem.edges:
        a, b = choice[edge.src].site, choice[edge.dst].site
        if a != b:
            moves.append(
                StepMove(
                    edge.src,
                    edge.dst,
                    a,
                    b,
                    edge.bytes,
                    edge.bytes / GB * problem.egress_per_gb.get((a, b), 0.0),
                )
            )
    breakdown = {
        "compute_usd": sum(o.compute_usd for o in choice.values()),
        "risk_usd": sum(o.risk_usd for o in choice.values()),
        "input_egress_usd": sum(o.egress_usd for o in choice.values()),
        "step_egress_usd": sum(m.usd for m in moves),
    }
    return Plan(
        problem.objective,
        solver,
        tuple(placements),
        tuple(moves),
        seconds,
        problem.budget_usd,
        problem.budget_name,
        breakdown,
    )
