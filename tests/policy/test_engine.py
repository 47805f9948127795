"""The policy engine is a pure function: every action, the defaults, selectors, jurisdictions and encryption."""

from __future__ import annotations

import pytest

from archipel.models.policy import PolicyRule
from archipel.models.workspace import WorkspaceSpec
from archipel.policy import DEFAULT_RULES, Place, Subject, evaluate, governing_rule, within

US = Place("aws-us-east-1", "aws", "US", {"tier": "cloud"})
EU_CLOUD = Place("gcp-europe-west4", "gcp", "EU", {"tier": "cloud"})
FRANKFURT = Place("onprem-frankfurt", "onprem", "DE", {"tier": "datacenter"}, has_key=True)

PATIENTS = Subject("dataset", "patients", "phi", "EU", datasets=("patients",))
PUBLIC = Subject("dataset", "iris", "public", "US", datasets=("iris",))


def test_jurisdiction_containment_is_proven_upward_only() -> None:
    assert within("DE", "EU") and within("EU", "EU") and within("US-CA", "US")
    assert not within("EU", "DE") and not within("US", "EU") and not within("CH", "EU")


@pytest.mark.parametrize("action", ["store", "process", "replicate", "derive_export"])
def test_personal_data_stays_in_its_origin_jurisdiction_by_default(action: str) -> None:
    refused = evaluate(action, PATIENTS, US)
    assert not refused.allowed
    assert refused.rule == "default-personal-data-residency"
    assert "only sites in EU" in refused.reason and "aws-us-east-1 is in US" in refused.reason
    assert evaluate(action, PATIENTS, EU_CLOUD).allowed
    assert evaluate(action, PATIENTS, FRANKFURT).allowed  # DE lies within EU


def test_non_personal_data_goes_anywhere_by_default() -> None:
    decision = evaluate("replicate", PUBLIC, FRANKFURT)
    assert decision.allowed and decision.rule == "default-open"


def test_serving_personal_data_stays_with_the_requester() -> None:
    model = Subject("model", "readmission", "phi", "EU", datasets=("patients",))
    assert evaluate("serve", model, EU_CLOUD, origin="EU").allowed
    assert evaluate("serve", model, FRANKFURT, origin="DE").allowed
    abroad = evaluate("serve", model, US, origin="EU")
    assert not abroad.allowed and abroad.origin == "EU"
    assert "answer requests from EU" in abroad.reason
    unknown = evaluate("serve", model, EU_CLOUD)
    assert not unknown.allowed and "origin jurisdiction is unknown" in unknown.reason


def test_aggregates_may_leave_by_default_and_a_rule_can_keep_them() -> None:
    assert evaluate("aggregate_export", PATIENTS, US).allowed
    rules = [PolicyRule(name="no-stats", match={"datasets": ["patients"]}, aggregate_export=False)]
    assert not evaluate("aggregate_export", PATIENTS, US, rules=rules).allowed


def test_first_matching_rule_wins_and_user_rules_precede_defaults() -> None:
    rules = [
        PolicyRule(
            name="phi-on-prem-only", match={"classifications": ["phi"]}, store={"providers": ["onprem"]}
        ),
        PolicyRule(name="never-reached", match={"classifications": ["phi"]}, store=False),
    ]
    assert governing_rule(PATIENTS, rules).name == "phi-on-prem-only"
    assert evaluate("store", PATIENTS, FRANKFURT, rules=rules).allowed
    refused = evaluate("store", PATIENTS, EU_CLOUD, rules=rules)
    assert not refused.allowed and refused.rule == "phi-on-prem-only" and "providers onprem" in refused.reason
    # a user rule can be looser than the default: it governs, the default never applies
    loose = [PolicyRule(name="research-waiver", match={"datasets": ["patients"]})]
    assert evaluate("store", PATIENTS, US, rules=loose).allowed


def test_selectors_combine_every_condition() -> None:
    rule = PolicyRule(
        name="eu-datacenter",
        match={"jurisdictions": ["EU"]},
        process={"jurisdictions": ["EU"], "labels": {"tier": "datacenter"}},
    )
    assert evaluate("process", PATIENTS, FRANKFURT, rules=[rule]).allowed
    refused = evaluate("process", PATIENTS, EU_CLOUD, rules=[rule])
    assert not refused.allowed and "label tier=datacenter" in refused.reason
    site_list = PolicyRule(name="named", process={"sites": ["onprem-frankfurt"]})
    assert not evaluate("process", PUBLIC, EU_CLOUD, rules=[site_list]).allowed
    assert evaluate("process", PUBLIC, FRANKFURT, rules=[site_list]).allowed


def test_false_forbids_everywhere() -> None:
    rule = PolicyRule(name="frozen", match={"datasets": ["iris"]}, derive_export=False)
    decision = evaluate("derive_export", PUBLIC, FRANKFURT, rules=[rule])
    assert not decision.allowed and "forbids derive export anywhere" in decision.reason


def test_encryption_at_rest_needs_a_keyed_site() -> None:
    rule = PolicyRule(name="sealed-phi", match={"classifications": ["phi"]}, encrypt_at_rest=True)
    refused = evaluate("replicate", PATIENTS, EU_CLOUD, rules=[rule])
    assert not refused.allowed and "no data key" in refused.reason
    allowed = evaluate("replicate", PATIENTS, FRANKFURT, rules=[rule])
    assert allowed.allowed and allowed.encrypt
    assert evaluate("process", PATIENTS, EU_CLOUD, rules=[rule]).allowed  # processing needs no key


def test_unknown_actions_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="unknown policy action"):
        evaluate("teleport", PATIENTS, US)


def test_policies_load_from_the_workspace_spec_and_names_are_unique() -> None:
    spec = WorkspaceSpec.model_validate(
        {"policies": [{"name": "a", "store": {"jurisdictions": ["origin"]}}, {"name": "b", "serve": False}]}
    )
    assert [r.name for r in spec.policies] == ["a", "b"]
    with pytest.raises(ValueError, match="unique"):
        WorkspaceSpec.model_validate({"policies": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ValueError, match="jurisdiction code"):
        WorkspaceSpec.model_validate({"policies": [{"name": "a", "store": {"jurisdictions": ["Europe"]}}]})


def test_defaults_are_documented_data() -> None:
    assert [r.name for r in DEFAULT_RULES] == ["default-personal-data-residency", "default-open"]
