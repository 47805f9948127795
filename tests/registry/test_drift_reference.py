"""The drift reference of a model version: computed from the evaluation data with the ONNX model's predictions,
stored at the model's sites next to its ONNX (never in the metadata store, whose card holds only a pointer),
copied only where the model may go, checked against its sha256 when read."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from archipel.db.engine import session_scope
from archipel.db.orm import ModelVersionRow
from archipel.errors import IntegrityError, NotFound, PolicyViolation, SpecError
from archipel.policy.audit import AuditLog
from archipel.registry.card import describe
from archipel.registry.card import drift_reference as compute_reference
from archipel.registry.convert import convert
from archipel.services.models import (
    delete_version,
    drift_reference,
    register_version,
    replicate_model,
    update_version,
)

HOME, EU, US = "onprem-frankfurt", "gcp-europe-west4", "aws-us-east-1"


@pytest.fixture(scope="module")
def described(breast_cancer: tuple[Any, Any]) -> tuple[Any, ...]:
    """A classifier described with its evaluation data: (converted, metrics, card, drift reference)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = breast_cancer
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    return describe(model, X[:64], eval_data=(X[:200], y[:200]))


def _register(ws: Any, engine: Any, described: tuple[Any, ...], name: str = "malignancy") -> Any:
    converted, metrics, card, reference = described
    return register_version(ws, engine, name, converted, site=HOME, datasets=["patients-eu"], metrics=metrics,
        card=card, drift_reference=reference)  # fmt: skip


def _stored_card(engine: Any, version: Any) -> dict[str, Any]:
    with session_scope(engine) as session:
        row = session.scalars(
            select(ModelVersionRow).where(
                ModelVersionRow.model == version.model, ModelVersionRow.version == version.version
            )
        ).one()
        return dict(row.card)


def _keys(value: Any) -> set[str]:
    """Every key of every mapping nested in ``value``."""
    if isinstance(value, dict):
        return set(value).union(*(_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value))
    return set()


def test_the_reference_is_stored_at_the_home_site_and_the_card_holds_only_a_pointer(
    reg_ws: tuple[Any, Any], described: tuple[Any, ...], breast_cancer: tuple[Any, Any]
) -> None:
    ws, engine = reg_ws
    X, _ = breast_cancer
    v = _register(ws, engine, described)
    pointer = v.card["drift_reference"]
    assert set(pointer) == {"key", "sha256", "bytes"}
    assert pointer["key"] == f"models/malignancy/{pointer['sha256']}.drift-reference.json"
    assert pointer["key"].rsplit("/", 1)[0] == v.key.rsplit("/", 1)[0]  # next to the ONNX
    assert ws.storage(HOME).size(pointer["key"]) == pointer["bytes"]
    assert [s for s in (EU, US) if ws.storage(s).exists(pointer["key"])] == []
    # the metadata store: the card's own profile, the pointer, nothing of the reference's grids
    stored = _stored_card(engine, v)
    assert set(stored) == {"importance", "profile", "conversion_check", "drift_reference"}
    assert stored["drift_reference"] == pointer
    reference = drift_reference(ws, v)
    only_in_reference = _keys(reference["features"]) - _keys(stored["profile"])
    assert {"grid", "kind", "dtype"} <= only_in_reference
    assert not only_in_reference & _keys(stored)
    text = json.dumps(stored)
    assert "grid" not in text and "f4:" not in text and reference["format"] not in text
    # what it holds: the model's features, and its predicted labels (a classifier's: categorical)
    assert reference == described[3] and reference["rows"] == 200
    assert v.signature["feature_names"] == list(X.columns)
    assert sorted(reference["features"]) == sorted(X.columns)  # stored with sorted keys
    assert reference["features"]["mean radius"]["kind"] == "numeric"
    assert list(reference["predictions"]) == ["prediction"]
    assert reference["predictions"]["prediction"]["kind"] == "categorical"
    assert reference["predictions"]["prediction"]["count"] == 200


def test_a_regressors_reference_profiles_its_predicted_values() -> None:
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 3)).astype(np.float32)
    y = X @ np.array([2.0, -1.0, 0.5]) + 4.0
    converted = convert(LinearRegression().fit(X, y), X[:32], feature_names=["a", "b", "c"])
    reference = compute_reference(converted.onnx, converted.signature, X)
    assert list(reference["features"]) == ["a", "b", "c"]
    prediction = reference["predictions"]["prediction"]
    assert prediction["kind"] == "numeric" and prediction["mean"] == pytest.approx(float(y.mean()), abs=1e-3)


def test_replicas_carry_the_reference_only_where_the_model_may_go(
    reg_ws: tuple[Any, Any], described: tuple[Any, ...]
) -> None:
    ws, engine = reg_ws
    v = _register(ws, engine, described)
    pointer = v.card["drift_reference"]
    replica, moved = replicate_model(ws, engine, v.ref, EU)
    assert replica.replicas == [EU, HOME] and moved == v.bytes + pointer["bytes"]
    assert ws.storage(EU).exists(pointer["key"])
    assert drift_reference(ws, replica, site=EU) == drift_reference(ws, replica, site=HOME)
    decisions = AuditLog(engine, ws.state_dir).entries(action="policy.derive_export")
    assert [(e.details["object"], e.outcome) for e in decisions if e.sites == (EU,)] == [
        (f"model {v.ref}", "allowed"),
        (f"drift reference of model {v.ref}", "allowed"),
    ]
    # EU patient data: a US copy is refused before a byte is written, the ONNX and the reference alike
    with pytest.raises(PolicyViolation) as refused:
        replicate_model(ws, engine, v.ref, US)
    assert refused.value.rule == "default-personal-data-residency"
    assert list(ws.storage(US).list("models/")) == []
    decisions = AuditLog(engine, ws.state_dir).entries(action="policy.derive_export")
    assert [(e.details["object"], e.outcome) for e in decisions if e.sites == (US,)] == [
        (f"model {v.ref}", "refused")
    ]
    with pytest.raises(NotFound, match=r"no replica at aws-us-east-1"):
        drift_reference(ws, replica, site=US)


def test_a_tampered_reference_is_refused(reg_ws: tuple[Any, Any], described: tuple[Any, ...]) -> None:
    ws, engine = reg_ws
    v = _register(ws, engine, described)
    replica, _ = replicate_model(ws, engine, v.ref, EU)
    key = v.card["drift_reference"]["key"]
    tampered = json.loads(ws.storage(EU).get(key))
    tampered["features"]["mean radius"]["mean"] += 1.0
    ws.storage(EU).put(key, json.dumps(tampered, sort_keys=True, separators=(",", ":")).encode())
    with pytest.raises(IntegrityError, match=r"drift reference of malignancy/1 at gcp-europe-west4"):
        drift_reference(ws, replica, site=EU)
    assert drift_reference(ws, replica)["rows"] == 200  # the home copy is intact


def test_a_version_registered_without_eval_data_has_no_reference(
    reg_ws: tuple[Any, Any], described: tuple[Any, ...]
) -> None:
    ws, engine = reg_ws
    v = register_version(ws, engine, "bare", described[0], site=HOME, datasets=["patients-eu"])
    assert "drift_reference" not in v.card
    with pytest.raises(NotFound, match=r"bare/1 has no drift reference: .*without evaluation data"):
        drift_reference(ws, v)
    _, moved = replicate_model(ws, engine, v.ref, EU)
    assert moved == v.bytes


def test_describe_keeps_the_drift_reference_out_of_the_card(breast_cancer: tuple[Any, Any]) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = breast_cancer
    model = LogisticRegression(max_iter=2000).fit(X[:100], y[:100])
    converted, _, card, _ = describe(model, X[:16], eval_data=(X[:50], y[:50]))
    assert set(card) == {"importance", "profile"}
    assert describe(model, X[:16])[3] is None  # no eval data, no reference
    assert converted.signature["feature_names"] == list(X.columns)


def test_a_card_pointer_must_name_a_stored_reference(
    reg_ws: tuple[Any, Any], described: tuple[Any, ...]
) -> None:
    ws, engine = reg_ws
    converted, _, card, reference = described
    v = _register(ws, engine, described)
    pointer = v.card["drift_reference"]
    # a job stored the ONNX and the reference at the site: the card points to them
    again = register_version(ws, engine, "malignancy", converted, site=HOME, stored=True,
        card={**card, "drift_reference": pointer})  # fmt: skip
    assert drift_reference(ws, again) == reference
    missing = {**pointer, "key": f"models/malignancy/{'0' * 64}.drift-reference.json", "sha256": "0" * 64}
    with pytest.raises(NotFound, match=r"drift reference of malignancy is not at onprem-frankfurt"):
        register_version(ws, engine, "malignancy", converted, site=HOME, card={"drift_reference": missing})
    with pytest.raises(SpecError, match=r"must be \{key, sha256, bytes\}"):
        register_version(ws, engine, "malignancy", converted, site=HOME,
            card={"drift_reference": {**pointer, "key": "elsewhere/x.json"}})  # fmt: skip
    with pytest.raises(SpecError, match=r"not both"):
        register_version(ws, engine, "malignancy", converted, site=HOME,
            card={"drift_reference": pointer}, drift_reference=reference)  # fmt: skip


def test_deleting_a_version_deletes_its_reference_where_no_other_version_holds_it(
    reg_ws: tuple[Any, Any], described: tuple[Any, ...]
) -> None:
    ws, engine = reg_ws
    first, second = _register(ws, engine, described), _register(ws, engine, described)
    key = first.card["drift_reference"]["key"]
    assert second.card["drift_reference"]["key"] == key  # content-addressed: one file
    replicate_model(ws, engine, first.ref, EU)
    update_version(ws, engine, first.ref, status="archived")
    delete_version(ws, engine, first.ref)
    assert not ws.storage(EU).exists(key)  # only the deleted version was there
    assert ws.storage(HOME).exists(key) and drift_reference(ws, second)["rows"] == 200
    update_version(ws, engine, second.ref, status="archived")
    delete_version(ws, engine, second.ref)
    assert not ws.storage(HOME).exists(key) and not ws.storage(HOME).exists(second.key)
