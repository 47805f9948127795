"""Planning scenarios on the bundled price catalog, asserting structured explanations (not message text)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from archipel.db import connect, session_scope
from archipel.db.orm import DatasetVersionRow
from archipel.errors import PolicyViolation
from archipel.models.job import JobSpec, PipelineSpec
from archipel.services.apply import apply_plan, plan_apply
from archipel.services.data import add_dataset
from archipel.services.plan import load_plan_spec, make_plan
from archipel.workspace import load_workspace

SITES = {
    "aws-us-east-1": {
        "provider": "aws",
        "region": "us-east-1",
        "jurisdiction": "US",
        "storage": "file://sites/aws",
        "capacity": {"cpus": 64, "memory": 512, "accelerators": {"A10G": 4}},
    },
    "gcp-europe-west4": {
        "provider": "gcp",
        "region": "europe-west4",
        "jurisdiction": "EU",
        "storage": "file://sites/gcp",
        "capacity": {"cpus": 64, "memory": 512},
    },
}


@pytest.fixture
def ws_factory(tmp_path: Path):
    engines = []

    def make(extra_sites: dict | None = None, **top: object):
        root = tmp_path / "ws"
        root.mkdir(exist_ok=True)
        spec = {"version": 1, "name": "plan-test", "sites": {**SITES, **(extra_sites or {})}, **top}
        (root / "archipel.yaml").write_text(yaml.safe_dump(spec))
        ws = load_workspace(root)
        engine = connect(ws.db_url)
        apply_plan(ws, engine, plan_apply(ws, engine))
        engines.append(engine)
        return ws, engine

    yield make
    for engine in engines:
        engine.dispose()


def _data(
    ws, engine, tmp_path: Path, name: str, site: str, classification: str, *, fake_bytes: int | None = None
):
    csv = tmp_path / f"{name}.csv"
    csv.write_text("a,b\n1,2\n3,4\n")
    version = add_dataset(ws, engine, name, csv, site=site, classification=classification).version
    if fake_bytes is not None:  # the planner reads metadata only: pretend the version is this large
        with session_scope(engine) as session:
            row = session.query(DatasetVersionRow).filter_by(dataset=name, version=version.version).one()
            row.bytes = fake_bytes
    return version


def _job(**fields: object) -> PipelineSpec:
    return PipelineSpec.of_job(JobSpec.model_validate({"name": "train", "run": "python train.py", **fields}))


def test_eu_phi_forces_an_eu_site_though_a_us_site_is_cheaper(ws_factory, tmp_path: Path) -> None:
    ws, engine = ws_factory()
    _data(ws, engine, tmp_path, "patients", "gcp-europe-west4", "phi")
    result = make_plan(
        ws, engine, _job(inputs=["patients"], resources={"cpus": 2, "memory": 8, "spot": False})
    )
    step = result.plan.placement("train")
    assert step.chosen.site == "gcp-europe-west4"
    (rejected,) = [r for r in step.rejections if r.site == "aws-us-east-1"]
    assert rejected.kind == "policy" and rejected.rule == "default-personal-data-residency"
    assert (
        rejected.would_cost_usd is not None and rejected.would_cost_usd < step.chosen.total_usd
    )  # cheaper, refused
    assert result.pins["patients@v1"].replicas == ("gcp-europe-west4",)


def test_a_two_terabyte_input_keeps_the_job_at_the_data(ws_factory, tmp_path: Path) -> None:
    ws, engine = ws_factory()
    _data(ws, engine, tmp_path, "logs", "gcp-europe-west4", "public", fake_bytes=2 * 10**12)
    _data(ws, engine, tmp_path, "small", "gcp-europe-west4", "public")
    resources = {"cpus": 2, "memory": 8, "spot": False}
    big = make_plan(ws, engine, _job(inputs=["logs"], resources=resources)).plan.placement("train")
    assert big.chosen.site == "gcp-europe-west4" and big.chosen.egress_usd == 0
    remote = next(o for o in big.ranked if o.site == "aws-us-east-1")
    assert remote.compute_usd < big.chosen.compute_usd  # cheaper compute, ...
    assert remote.egress_usd == pytest.approx(2000 * ws.catalog.egress.rate("gcp", "internet").price_per_gb)
    small = make_plan(ws, engine, _job(inputs=["small"], resources=resources)).plan.placement("train")
    assert small.chosen.site == "aws-us-east-1"  # ... which wins when the data is small


def test_a_gpu_job_goes_where_the_gpu_is(ws_factory) -> None:
    ws, engine = ws_factory()
    step = make_plan(ws, engine, _job(resources={"cpus": 4, "memory": 16, "accelerators": "A10G:1"})).plan
    chosen = step.placement("train")
    assert chosen.chosen.site == "aws-us-east-1" and chosen.chosen.offer == "g5.xlarge"
    (gcp,) = [r for r in chosen.rejections if r.site == "gcp-europe-west4"]
    assert gcp.kind == "capacity"


def test_spot_wins_when_checkpointed_and_cheaper_in_expectation(ws_factory) -> None:
    flaky = {**SITES["aws-us-east-1"], "spot_preemption_per_hour": 0.3}
    ws, engine = ws_factory(
        {"aws-us-east-1": flaky},
    )
    resources = {"cpus": 2, "memory": 8, "spot": "auto"}
    no_ckpt = make_plan(
        ws, engine, _job(resources=resources, estimate="20h", constraints={"sites": ["aws-us-east-1"]})
    )
    assert no_ckpt.plan.placement("train").chosen.spot is False
    spot_option = next(o for o in no_ckpt.plan.placement("train").ranked if o.spot)
    assert (
        spot_option.risk_usd > 0 and spot_option.total_usd > no_ckpt.plan.placement("train").chosen.total_usd
    )
    ckpt = make_plan(
        ws,
        engine,
        _job(resources=resources, estimate="20h", checkpoint="10m", constraints={"sites": ["aws-us-east-1"]}),
    )
    chosen = ckpt.plan.placement("train").chosen
    assert chosen.spot is True and 0 < chosen.risk_usd < chosen.compute_usd


def test_constraints_and_budgets_are_reported_per_site(ws_factory) -> None:
    ws, engine = ws_factory(budgets={"tiny": {"amount_usd": 0.01, "period": "month", "tags": {"team": "ml"}}})
    result = make_plan(ws, engine, _job(constraints={"deny_providers": ["aws"]}))
    (aws,) = [r for r in result.plan.placement("train").rejections if r.site == "aws-us-east-1"]
    assert aws.kind == "constraint"
    with pytest.raises(PolicyViolation) as info:
        make_plan(ws, engine, _job(tags={"team": "ml"}, estimate="10h"))
    assert info.value.rule == "budget:tiny"


def test_pipeline_steps_follow_their_data_and_outputs_inherit_restrictions(
    ws_factory, tmp_path: Path
) -> None:
    ws, engine = ws_factory()
    _data(ws, engine, tmp_path, "patients", "gcp-europe-west4", "phi")
    spec_file = tmp_path / "pipeline.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "name": "readmission",
                "steps": {
                    "prepare": {
                        "run": "python prep.py",
                        "inputs": ["patients"],
                        "outputs": {"features": {"kind": "dataset", "size": 50}},
                    },
                    "train": {
                        "run": "python train.py",
                        "needs": ["prepare"],
                        "inputs": {"features": "steps.prepare.outputs.features"},
                    },
                },
            }
        )
    )
    result = make_plan(ws, engine, load_plan_spec(spec_file))
    train = result.plan.placement("train")
    assert train.chosen.site == "gcp-europe-west4"
    assert any(r.kind == "policy" and r.site == "aws-us-east-1" for r in train.rejections)  # inherited phi
    assert result.plan.step_moves == ()
    assert len(result.fingerprint) == 64
