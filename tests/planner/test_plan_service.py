"""The service around the planner: saved plans go stale when the world changes; policy is never overruled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archipel.db import connect
from archipel.errors import Conflict, NoCapacity, PolicyViolation
from archipel.models.job import JobSpec, PipelineSpec
from archipel.policy import Place, evaluate
from archipel.services.data import add_dataset, get_dataset, replicate_dataset
from archipel.services.plan import check_saved_plan, make_plan
from archipel.workspace import load_workspace


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    from archipel.services.apply import apply_plan, plan_apply
    from archipel.services.init import init_workspace

    root = tmp_path_factory.mktemp("plan-ws")
    ws = init_workspace(root / "ws", demo=True)
    engine = connect(ws.db_url)
    apply_plan(ws, engine, plan_apply(ws, engine))
    csv = root / "d.csv"
    csv.write_text("a,b\n1,2\n")
    for name, site, cls in [
        ("eu-phi", "onprem-frankfurt", "phi"),
        ("us-pii", "aws-us-east-1", "pii"),
        ("eu-public", "gcp-europe-west4", "public"),
        ("us-internal", "aws-us-east-1", "internal"),
    ]:
        add_dataset(ws, engine, name, csv, site=site, classification=cls)
    yield ws, engine
    engine.dispose()


def _job(inputs: list[str]) -> PipelineSpec:
    return PipelineSpec.of_job(JobSpec(name="j", run="x", inputs=inputs))


def test_a_saved_plan_runs_only_while_nothing_changed(world, tmp_path: Path) -> None:
    ws, engine = world
    saved = json.loads(json.dumps(make_plan(ws, engine, _job(["eu-public"])).as_json()))
    assert check_saved_plan(ws, engine, saved).fingerprint == saved["fingerprint"]
    replicate_dataset(ws, engine, "eu-public", "aws-us-east-1")  # the data now lives in a second place
    with pytest.raises(Conflict, match="stale"):
        check_saved_plan(ws, engine, saved)


rule_strategy = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["r1", "r2", "r3"]),
        "match": st.fixed_dictionaries(
            {},
            optional={
                "classifications": st.lists(
                    st.sampled_from(["public", "internal", "pii", "phi"]), min_size=1, unique=True
                ),
                "jurisdictions": st.lists(st.sampled_from(["EU", "US", "DE"]), min_size=1, unique=True),
            },
        ),
        "process": st.one_of(
            st.booleans(),
            st.fixed_dictionaries(
                {},
                optional={
                    "jurisdictions": st.lists(
                        st.sampled_from(["EU", "US", "origin"]), min_size=1, unique=True
                    ),
                    "providers": st.lists(st.sampled_from(["aws", "gcp", "onprem"]), min_size=1, unique=True),
                },
            ),
        ),
    }
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rules=st.lists(rule_strategy, max_size=3, unique_by=lambda r: r["name"]),
    inputs=st.lists(
        st.sampled_from(["eu-phi", "us-pii", "eu-public", "us-internal"]), min_size=1, unique=True
    ),
)
def test_the_plan_never_places_a_step_where_the_policy_says_no(world, rules, inputs) -> None:
    ws, engine = world
    spec = yaml.safe_load(ws.file.read_text())
    spec["policies"] = rules
    ws.file.write_text(yaml.safe_dump(spec))
    current = load_workspace(ws.root)
    try:
        result = make_plan(current, engine, _job(inputs))
    except (PolicyViolation, NoCapacity):
        # nowhere allowed: then really no site may process every input
        for site in current.spec.sites:
            place = Place.of(site, current.site(site))
            assert not all(
                evaluate(
                    "process", get_dataset(engine, d).subject(), place, rules=current.spec.policies
                ).allowed
                for d in inputs
            )
        return
    chosen = result.plan.placement("j").chosen.site
    place = Place.of(chosen, current.site(chosen))
    for name in inputs:
        assert evaluate(
            "process", get_dataset(engine, name).subject(), place, rules=current.spec.policies
        ).allowed
