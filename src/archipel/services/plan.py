"""``archipel plan``: build the placement problem from the workspace, then solve it with the pure planner.

Problem building reads the spec, the price catalog, the metadata store (dataset versions, replicas, site health,
the ledger for budgets) and asks the policy engine about every input at every site; every site that cannot take
a step is kept with its reason. The planner itself (:mod:`archipel.planner`) reads nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from archipel.cost.ledger import egress_rate, spent
from archipel.data.ingest import DatasetRef
from archipel.db.engine import session_scope
from archipel.db.orm import SiteRow
from archipel.errors import Conflict, NotFound, SpecError
from archipel.models.job import InputRef, JobSpec, PipelineSpec, StepSpec
from archipel.planner import InputMove, Option, Plan, Problem, Rejection, StepProblem, plan
from archipel.planner.problem import GB, Edge
from archipel.policy.engine import Place, Subject, evaluate
from archipel.policy.jurisdiction import within
from archipel.pricing.preemption import PREEMPTION_PER_HOUR, expected_hours
from archipel.services.data import DatasetView, get_dataset, resolve_version
from archipel.services.models import VersionView, get_version
from archipel.services.offers import OfferRequest, SiteOffer, find_offers, fits_capacity
from archipel.spec.validate import parse_model
from archipel.spec.yaml_loader import load_yaml
from archipel.workspace import Workspace

__all__ = ["PlanResult", "build_problem", "check_saved_plan", "load_plan_spec", "make_plan"]

OFFERS_PER_SITE = 3
DEFAULT_OUTPUT_BYTES = {"dataset": 1 * 2**30, "artifact": 100 * 2**20}
UNHEALTHY = ("degraded", "unreachable")


def load_plan_spec(path: Path, *, shown: str | None = None) -> PipelineSpec:
    """A job or pipeline YAML file (a pipeline has ``steps:``), with file:line errors naming it ``shown`` (default:
    ``path``)."""
    name = shown or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{name}: file not found", location=name) from None
    except UnicodeDecodeError:
        raise SpecError(f"{name}: not UTF-8 text", location=name) from None
    data, positions = load_yaml(text, name)
    if isinstance(data, dict) and "steps" in data:
        return parse_model(data, positions, PipelineSpec)
    return PipelineSpec.of_job(parse_model(data, positions, JobSpec))


@dataclass(frozen=True)
class PinnedInput:
    ref: str
    sha256: str
    bytes: int
    replicas: tuple[str, ...]


@dataclass(frozen=True)
class PlanResult:
    spec: PipelineSpec
    problem: Problem
    plan: Plan
    pins: dict[str, PinnedInput] = field(default_factory=dict)
    """Dataset versions the plan was made for (the newest when the spec names no version)."""
    fingerprint: str = ""
    """sha256 over everything the plan depends on: a saved plan is refused when this changes."""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "spec": self.spec.model_dump(mode="json"),
            "fingerprint": self.fingerprint,
            "pins": {
                name: pin.__dict__ | {"replicas": list(pin.replicas)} for name, pin in self.pins.items()
            },
            **self.plan.as_json(),
        }


@dataclass
class _Builder:
    workspace: Workspace
    engine: Engine
    spec: PipelineSpec
    datasets: dict[str, DatasetView] = field(default_factory=dict)
    pins: dict[str, PinnedInput] = field(default_factory=dict)
    subjects: dict[str, list[Subject]] = field(default_factory=dict)
    """Per step: the data it touches (its dataset inputs and, through step outputs, its ancestors')."""

    def dataset(self, ref: InputRef) -> tuple[DatasetView, PinnedInput]:
        view = self.datasets.get(ref.name) or get_dataset(self.engine, ref.name)
        self.datasets[ref.name] = view
        version = resolve_version(view, DatasetRef(ref.name, ref.version))
        pin = PinnedInput(version.ref, version.sha256, version.bytes, tuple(sorted(version.replicas)))
        self.pins[version.ref] = pin
        return view, pin

    def model(self, ref: InputRef) -> tuple[VersionView, PinnedInput]:
        """The model version behind ``ref`` (an alias is pinned to the version it points to now)."""
        text = f"{ref.name}@{ref.alias}" if ref.alias else f"{ref.name}/{ref.version}"
        version = get_version(self.engine, text)
        pin = PinnedInput(f"models:/{version.ref}", version.sha256, version.bytes, tuple(version.replicas))
        self.pins[pin.ref] = pin
        return version, pin

    def step_subjects(self, name: str, step: StepSpec) -> list[Subject]:
        if name in self.subjects:
            return self.subjects[name]
        out: list[Subject] = []
        for ref in step.input_refs().values():
            if ref.kind == "dataset":
                out.append(self.dataset(ref)[0].subject())
            elif ref.kind == "model":
                out.extend(self.model(ref)[0].subjects())
            elif ref.step is not None:
                # a step's outputs derive from its inputs: they carry the same restrictions downstream
                out.extend(self.step_subjects(ref.step, self.spec.steps[ref.step]))
        self.subjects[name] = out
        return out


def _constraint_problem(step: StepSpec, site_name: str, workspace: Workspace) -> str | None:
    c, site = step.constraints, workspace.site(site_name)
    if c.sites is not None and site_name not in c.sites:
        return f"not in the job's sites ({', '.join(c.sites)})"
    if site_name in c.deny_sites:
        return "denied by the job's deny_sites"
    if c.providers is not None and site.provider not in c.providers:
        return f"provider {site.provider} not in the job's providers ({', '.join(c.providers)})"
    if site.provider in c.deny_providers:
        return f"provider {site.provider} denied by the job"
    if c.jurisdictions is not None and not any(within(site.jurisdiction, j) for j in c.jurisdictions):
        return f"jurisdiction {site.jurisdiction} not within the job's jurisdictions ({', '.join(c.jurisdictions)})"
    if any(within(site.jurisdiction, j) for j in c.deny_jurisdictions):
        return f"jurisdiction {site.jurisdiction} denied by the job"
    return None


def _offers(workspace: Workspace, step: StepSpec, site_name: str) -> tuple[list[SiteOffer], Rejection | None]:
    r = step.resources
    accelerator, count = next(iter(r.accelerators.items()), (None, 0))
    modes = [True] if r.spot is True else [False] if r.spot is False else [False, True]
    found: list[SiteOffer] = []
    for spot in modes:
        req = OfferRequest(r.cpus, r.memory / 2**30, accelerator, count, spot, sites=(site_name,))
        found.extend(find_offers(workspace, req)[:OFFERS_PER_SITE])
    need = f"{r.cpus:g} cpus, {r.memory / 2**30:g} GiB" + (f", {accelerator}:{count}" if accelerator else "")
    if not found:
        req = OfferRequest(r.cpus, r.memory / 2**30, accelerator, count, False, sites=(site_name,))
        if not fits_capacity(workspace, site_name, req):
            cap = workspace.site(site_name).capacity
            return [], Rejection(
                site_name,
                "capacity",
                f"needs {need}; capacity {cap.cpus:g} cpus, "
                f"{cap.memory / 2**30:g} GiB, {dict(cap.accelerators) or 'no accelerators'}",
            )
        spot = " spot" if r.spot is True else ""
        return [], Rejection(site_name, "no_offer", f"no{spot} offer with {need} at this site")
    if step.constraints.max_hourly_cost is not None:
        cheap = [o for o in found if o.hourly * r.nodes <= step.constraints.max_hourly_cost]
        if not cheap:
            best = min(o.hourly * r.nodes for o in found)
            return [], Rejection(
                site_name,
                "constraint",
                f"cheapest fit costs ${best:.4f}/h, above max_hourly_cost "
                f"${step.constraints.max_hourly_cost:g}/h",
            )
        found = cheap
    return found, None


def build_problem(
    workspace: Workspace, engine: Engine, spec: PipelineSpec, *, objective: str = "cost"
) -> tuple[Problem, dict[str, PinnedInput]]:
    builder = _Builder(workspace, engine, spec)
    with session_scope(engine) as session:
        health = {row.name: row.health for row in session.scalars(select(SiteRow))}
    sites = list(workspace.spec.sites)
    places = {name: Place.of(name, workspace.site(name)) for name in sites}
    prices = {(a, b): egress_rate(workspace, a, b) for a in sites for b in sites if a != b}
    steps: list[StepProblem] = []
    edges: dict[tuple[str, str], int] = {}
    for name in spec.order():
        step = spec.steps[name]
        subjects = builder.step_subjects(name, step)
        options: list[Option] = []
        rejections: list[Rejection] = []
        for site_name in sites:
            site = workspace.site(site_name)
            if not site.enabled:
                rejections.append(Rejection(site_name, "disabled", "the site is disabled in archipel.yaml"))
                continue
            if health.get(site_name) in UNHEALTHY:
                rejections.append(Rejection(site_name, "health", f"last check found it {health[site_name]}"))
                continue
            problem = _constraint_problem(step, site_name, workspace)
            if problem:
                rejections.append(Rejection(site_name, "constraint", problem))
                continue
            refused = next(
                (
                    d
                    for s in subjects
                    if not (
                        d := evaluate("process", s, places[site_name], rules=workspace.spec.policies)
                    ).allowed
                ),
                None,
            )
            offers, rejection = _offers(workspace, step, site_name)
            moves = _moves(builder, step, site_name, prices)
            if refused is not None:
                would = min((o.hourly * step.resources.nodes * step.estimate for o in offers), default=None)
                if would is not None:
                    would += sum(m.usd for m in moves)
                rejections.append(Rejection(site_name, "policy", refused.reason, refused.rule, would))
                continue
            if rejection is not None:
                rejections.append(rejection)
                continue
            rate = site.spot_preemption_per_hour
            rate = PREEMPTION_PER_HOUR.get(site.provider, 0.0) if rate is None else rate
            checkpoint_h = step.checkpoint / 3600 if step.checkpoint else None
            transfer_h = sum(_transfer_hours(workspace, m.source_site, site_name, m.bytes) for m in moves)
            for offer in offers:
                risk = (
                    expected_hours(step.estimate, rate, checkpoint_h) - step.estimate if offer.spot else 0.0
                )
                options.append(
                    Option(
                        site=site_name,
                        offer=offer.offer.instance_type,
                        spot=offer.spot,
                        nodes=step.resources.nodes,
                        hourly_usd=offer.hourly * step.resources.nodes,
                        hours=step.estimate,
                        risk_hours=risk,
                        moves=tuple(moves),
                        transfer_hours=transfer_h,
                    )
                )
        steps.append(StepProblem(name, tuple(options), tuple(rejections), tuple(step.needs)))
        for ref in step.input_refs().values():
            if ref.kind == "step_output" and ref.step is not None:
                out = spec.steps[ref.step].outputs[ref.name]
                size = out.size if out.size is not None else DEFAULT_OUTPUT_BYTES[out.kind]
                edges[(ref.step, name)] = edges.get((ref.step, name), 0) + size
    hours = {(a, b): _transfer_hours(workspace, a, b, GB) for a in sites for b in sites if a != b}
    budget_usd, budget_name = _budget(workspace, engine, spec)
    problem = Problem(
        tuple(steps),
        tuple(Edge(a, b, n) for (a, b), n in edges.items()),
        prices,
        hours,
        "time" if objective == "time" else "cost",
        budget_usd,
        budget_name,
    )
    return problem, builder.pins


def _moves(
    builder: _Builder, step: StepSpec, site_name: str, prices: dict[tuple[str, str], float]
) -> list[InputMove]:
    """The dataset and model inputs ``site_name`` lacks, each from its cheapest replica."""
    moves = []
    for input_name, ref in step.input_refs().items():
        if ref.kind == "step_output":
            continue
        _, pin = builder.dataset(ref) if ref.kind == "dataset" else builder.model(ref)
        if site_name in pin.replicas or not pin.replicas:
            continue
        source = min(pin.replicas, key=lambda r: (prices[(r, site_name)], r))
        moves.append(InputMove(input_name, pin.ref, source, pin.bytes, prices[(source, site_name)]))
    return moves


def _transfer_hours(workspace: Workspace, src: str, dst: str, nbytes: int) -> float:
    a, b = workspace.site(src), workspace.site(dst)
    try:
        gbps = workspace.catalog.bandwidth_gbps((a.provider, a.region), (b.provider, b.region))
    except NotFound:
        gbps = 1.0
    return nbytes * 8 / (gbps * 1e9) / 3600


def _budget(workspace: Workspace, engine: Engine, spec: PipelineSpec) -> tuple[float | None, str | None]:
    """The tightest hard budget whose tags the pipeline carries: what is left of it (soft budgets only warn,
    at launch)."""
    tags = dict(spec.tags)
    for step in spec.steps.values():
        tags.update(step.tags)
    tightest: tuple[float, str] | None = None
    with session_scope(engine) as session:
        for name, budget in workspace.spec.budgets.items():
            if budget.enforcement != "hard" or any(tags.get(k) != v for k, v in budget.tags.items()):
                continue
            left = budget.amount_usd - spent(session, budget.tags, budget.period, sites=budget.sites)
            if tightest is None or left < tightest[0]:
                tightest = (left, name)
    return (tightest[0], tightest[1]) if tightest else (None, None)


def _fingerprint(problem: Problem, pins: dict[str, PinnedInput], spec: PipelineSpec) -> str:
    """Everything the plan depends on: options and prices, rejections (policy, health), pins, the spec."""
    payload = {
        "spec": spec.model_dump(mode="json"),
        "pins": {k: [p.sha256, list(p.replicas)] for k, p in sorted(pins.items())},
        "steps": [
            [s.name, [o.as_json() for o in s.options], [r.as_json() for r in s.rejections]]
            for s in problem.steps
        ],
        "egress": sorted((f"{a}>{b}", v) for (a, b), v in problem.egress_per_gb.items()),
        "budget": [problem.budget_name, problem.budget_usd],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def make_plan(
    workspace: Workspace, engine: Engine, spec: PipelineSpec, *, objective: str = "cost", solver: str = "auto"
) -> PlanResult:
    problem, pins = build_problem(workspace, engine, spec, objective=objective)
    result = plan(problem, solver)  # type: ignore[arg-type]
    return PlanResult(spec, problem, result, pins, _fingerprint(problem, pins, spec))


def check_saved_plan(workspace: Workspace, engine: Engine, saved: dict[str, Any]) -> PlanResult:
    """Re-plan a saved plan's spec and refuse (:class:`Conflict`) if anything it depended on changed.

    Prices, dataset versions and replicas, policies, site health, budgets and the spec itself all feed the
    fingerprint; a saved plan runs only while they are as they were (Terraform's saved-plan habit).
    """
    spec = PipelineSpec.model_validate(saved["spec"])
    current = make_plan(workspace, engine, spec, objective=saved.get("objective", "cost"))
    if current.fingerprint != saved.get("fingerprint"):
        chosen = {p["step"]: p["chosen"]["site"] for p in saved.get("steps", [])}
        now = {p.step: p.chosen.site for p in current.plan.placements}
        moved = [
            f"{step}: {chosen.get(step)} -> {site}" for step, site in now.items() if chosen.get(step) != site
        ]
        raise Conflict(
            "the saved plan is stale: prices, data, policies, site health or budgets changed since it was made"
            + (f" (placements now differ: {'; '.join(moved)})" if moved else " (placements are unchanged)")
            + "; plan again"
        )
    return current
