"""The solvers on generated problems: the MILP equals brute force, constraints never lower the cost, budgets bind."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archipel.errors import NoCapacity, PolicyViolation
from archipel.planner import Edge, InputMove, Option, Problem, Rejection, StepProblem, plan
from archipel.planner.problem import GB
from archipel.planner.solve import brute_force, solve_milp

SITES = ["a", "b", "c", "d"]


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    n_steps = draw(st.integers(1, 4))
    steps = []
    names = [f"s{i}" for i in range(n_steps)]
    for i, name in enumerate(names):
        options = []
        for site in draw(st.lists(st.sampled_from(SITES), min_size=1, max_size=4, unique=True)):
            for spot in draw(st.lists(st.booleans(), min_size=1, max_size=2, unique=True)):
                options.append(
                    Option(
                        site=site,
                        offer=f"{site}-vm",
                        spot=spot,
                        nodes=1,
                        hourly_usd=draw(st.floats(0.01, 5)),
                        hours=draw(st.floats(0.1, 10)),
                        risk_hours=draw(st.floats(0, 2)) if spot else 0.0,
                        moves=(InputMove("d", "d@v1", "a", draw(st.integers(0, 50 * GB)), 0.09),)
                        if site != "a"
                        else (),
                    )
                )
        needs = tuple(draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=2))) if i else ()
        steps.append(StepProblem(name, tuple(options), needs=needs))
    edges = tuple(
        Edge(need, step.name, draw(st.integers(0, 200 * GB))) for step in steps for need in step.needs
    )
    prices = {
        (i, j): draw(st.sampled_from([0.0, 0.01, 0.02, 0.09, 0.12])) for i in SITES for j in SITES if i != j
    }
    return Problem(tuple(steps), edges, prices)


def _cost(problem: Problem, choice: dict[str, Option]) -> float:
    total = sum(o.total_usd for o in choice.values())
    for e in problem.edges:
        total += problem.edge_weight(e, choice[e.src].site, choice[e.dst].site)
    return total


@settings(max_examples=60, deadline=None)
@given(problems())
def test_milp_cost_equals_brute_force(problem: Problem) -> None:
    assert _cost(problem, solve_milp(problem)) == pytest.approx(
        _cost(problem, brute_force(problem)),
        rel=1e-6,
        abs=1e-4,  # HiGHS tolerances: a hundredth of a cent
    )


@settings(max_examples=40, deadline=None)
@given(problems(), st.data())
def test_a_constraint_never_lowers_the_optimum(problem: Problem, data: st.DataObject) -> None:
    step = data.draw(st.sampled_from(problem.steps))
    if len(step.options) < 2:
        return
    banned = data.draw(st.sampled_from(step.options))
    narrower = Problem(
        tuple(
            StepProblem(
                s.name, tuple(o for o in s.options if s is not step or o != banned), s.rejections, s.needs
            )
            for s in problem.steps
        ),
        problem.edges,
        problem.egress_per_gb,
    )
    assert plan(narrower).total_usd >= plan(problem).total_usd * (1 - 1e-6) - 1e-4


@settings(max_examples=40, deadline=None)
@given(problems())
def test_greedy_is_feasible_and_never_beats_the_milp(problem: Problem) -> None:
    exact, rough = plan(problem, "milp"), plan(problem, "greedy")
    assert rough.total_usd >= exact.total_usd * (1 - 1e-6) - 1e-4
    for placement in rough.placements:
        assert placement.chosen in problem.step(placement.step).options


def test_step_egress_pulls_a_consumer_to_its_producer() -> None:
    produce = StepProblem("prep", (Option("a", "vm", False, 1, 1.0, 1.0),))
    train = StepProblem(
        "train",
        (Option("a", "vm", False, 1, 1.0, 1.0), Option("b", "vm", False, 1, 0.9, 1.0)),
        needs=("prep",),
    )
    small = Problem((produce, train), (Edge("prep", "train", 1 * GB),), {("a", "b"): 0.09})
    big = Problem((produce, train), (Edge("prep", "train", 100 * GB),), {("a", "b"): 0.09})
    assert plan(small).placement("train").chosen.site == "b"  # 0.10 cheaper compute beats 0.09 egress
    chosen = plan(big)
    assert chosen.placement("train").chosen.site == "a" and chosen.step_moves == ()
    assert plan(small).breakdown["step_egress_usd"] == pytest.approx(0.09)


def test_budgets_bind_and_name_themselves() -> None:
    step = StepProblem("s", (Option("a", "vm", False, 1, 2.0, 1.0), Option("b", "vm", False, 1, 3.0, 1.0)))
    assert plan(Problem((step,), budget_usd=2.5, budget_name="team")).total_usd == pytest.approx(2.0)
    with pytest.raises(PolicyViolation, match="budget team") as info:
        plan(Problem((step,), budget_usd=1.0, budget_name="team"))
    assert info.value.rule == "budget:team"
    with pytest.raises(PolicyViolation):
        plan(Problem((step,), budget_usd=1.0, budget_name="team"), "greedy")


def test_a_step_without_options_reports_every_rejection() -> None:
    step = StepProblem(
        "s",
        (),
        (Rejection("us", "policy", "phi stays in EU", "residency"), Rejection("eu", "policy", "x", "r2")),
    )
    with pytest.raises(PolicyViolation, match="no site can run step s") as info:
        plan(Problem((step,)))
    assert info.value.rule == "residency"
    mixed = StepProblem("s", (), (Rejection("us", "capacity", "8 cpus > 4"),))
    with pytest.raises(NoCapacity):
        plan(Problem((mixed,)))


def test_time_objective_prefers_the_faster_option() -> None:
    slow_cheap = Option("a", "vm", False, 1, 0.2, 10.0)
    fast_dear = Option("b", "gpu", False, 1, 5.0, 1.0)
    step = StepProblem("s", (slow_cheap, fast_dear))
    assert plan(Problem((step,))).placement("s").chosen == slow_cheap
    assert plan(Problem((step,), objective="time")).placement("s").chosen == fast_dear
