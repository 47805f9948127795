"""Drift statistics on real samples with fixed seeds: verdicts, false alarms, PSI, the site's minimum bin size,
agreement with scipy on raw data, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from archipel.errors import SpecError
from archipel.monitoring.drift import (
    DriftConfig,
    current_profile,
    detect,
    reference_profile,
    schema_skew,
)
from archipel.monitoring.profiles import _unpack as unpack
from archipel.registry.card import profile as card_profile

NUMERIC = [f"x{i}" for i in range(6)]
CATEGORICAL = ["colour", "code"]
NAMES = [*NUMERIC, "flag", *CATEGORICAL]  # flag: 0/1 numbers, tested as categorical (two values)
COLOURS, COLOUR_P = np.array(["red", "green", "blue", "grey"]), np.array([0.4, 0.3, 0.2, 0.1])


def sample(rng: np.random.Generator, n: int, *, shift: float = 0.0, colour_p: np.ndarray = COLOUR_P,
           flag_p: float = 0.3) -> dict[str, np.ndarray]:  # fmt: skip
    """x0 normal (``shift`` std added), x1 lognormal, x2 uniform, x3 Poisson counts, x4 normal with a
    different scale, x5 exponential; flag Bernoulli; colour strings; code small integers."""
    return {
        "x0": rng.normal(10.0, 2.0, n) + 2.0 * shift,
        "x1": rng.lognormal(0.0, 1.0, n),
        "x2": rng.uniform(-1.0, 1.0, n),
        "x3": rng.poisson(7.0, n).astype(np.float64),
        "x4": rng.normal(0.0, 1000.0, n),
        "x5": rng.exponential(3.0, n),
        "flag": (rng.random(n) < flag_p).astype(np.int64),
        "colour": rng.choice(COLOURS, n, p=colour_p),
        "code": rng.integers(0, 12, n),
    }


@pytest.fixture(scope="module")
def reference() -> dict:
    rng = np.random.default_rng(7)
    data = sample(rng, 50_000)
    return reference_profile(data, NAMES, categorical=CATEGORICAL, predictions=rng.normal(size=50_000))


def flagged(report) -> set[str]:
    return {f.feature for f in report.features if f.drifted}


def test_mean_shift_flagged_large_sample(reference: dict) -> None:
    rng = np.random.default_rng(1)
    report = detect(reference, sample(rng, 5000, shift=1.0))
    assert flagged(report) == {"x0"}
    x0 = report.feature("x0")
    assert (x0.test, x0.threshold, x0.current_rows, x0.reference_rows) == ("wasserstein", 0.1, 5000, 50_000)
    assert 0.9 < x0.score < 1.1  # W1 of a 1-std shift, normed by the std
    assert {report.feature(n).test for n in ("colour", "code", "flag")} == {"jensenshannon"}
    assert not report.dataset_drift and report.share_drifted == pytest.approx(1 / 9)


def test_mean_shift_flagged_small_sample_ks(reference: dict) -> None:
    rng = np.random.default_rng(2)
    report = detect(reference, sample(rng, 500, shift=1.0))
    x0 = report.feature("x0")
    assert x0.test == "ks" and x0.drifted and x0.score < 1e-10 and x0.statistic > 0.3
    assert report.feature("colour").test == "chisquare" and report.feature("code").test == "chisquare"
    assert report.feature("flag").test == "z"  # two values: Evidently's Z-test
    assert "x0" in flagged(report)


def test_sample_size_rule() -> None:
    """The smaller sample chooses by default (Evidently: the reference's size, ``select_by="reference"``)."""
    rng = np.random.default_rng(14)
    big, small = (
        reference_profile({"v": rng.normal(size=20_000)}, ["v"]),
        reference_profile({"v": rng.normal(size=800)}, ["v"]),
    )
    assert detect(big, {"v": rng.normal(size=500)}).features[0].test == "ks"
    assert (
        detect(big, {"v": rng.normal(size=500)}, DriftConfig(select_by="reference")).features[0].test
        == "wasserstein"
    )
    assert detect(small, {"v": rng.normal(size=5000)}).features[0].test == "ks"
    assert (
        detect(small, {"v": rng.normal(size=5000)}, DriftConfig(select_by="current")).features[0].test
        == "wasserstein"
    )


def test_dataset_drift_when_half_the_features_move(reference: dict) -> None:
    rng = np.random.default_rng(3)
    data = sample(rng, 5000, shift=1.0, colour_p=np.array([0.1, 0.2, 0.3, 0.4]), flag_p=0.6)
    data["x2"], data["x3"] = data["x2"] + 0.5, data["x3"] + 3
    report = detect(reference, data)
    assert flagged(report) == {"x0", "x2", "x3", "flag", "colour"}
    assert report.dataset_drift and report.share_drifted == pytest.approx(5 / 9)
    assert not detect(reference, data, DriftConfig(drift_share=0.6)).dataset_drift


def test_no_false_alarms_over_twenty_windows(reference: dict) -> None:
    rng = np.random.default_rng(4)
    for _ in range(20):
        report = detect(reference, sample(rng, 5000), predictions=rng.normal(size=5000))
        assert not report.dataset_drift and not flagged(report), report.drifted_features
        assert not report.predictions[0].drifted and report.predictions[0].test == "wasserstein"


def test_small_sample_p_values_are_calibrated(reference: dict) -> None:
    """With 300 rows the tests are KS, chi-squared and Z: under no drift they fire about 5 % of the time."""
    rng = np.random.default_rng(5)
    fired = [f.drifted for _ in range(150) for f in detect(reference, sample(rng, 300)).features]
    assert 0.02 <= np.mean(fired) <= 0.08, np.mean(fired)


def test_categorical_drift(reference: dict) -> None:
    rng = np.random.default_rng(6)
    moved = np.array([0.25, 0.3, 0.2, 0.25])
    large = detect(reference, sample(rng, 5000, colour_p=moved)).feature("colour")
    assert (large.test, large.drifted) == ("jensenshannon", True) and large.score >= 0.1
    small = detect(reference, sample(rng, 400, colour_p=moved)).feature("colour")
    assert (small.test, small.drifted) == ("chisquare", True) and small.score < 0.05
    same = detect(reference, sample(rng, 400)).feature("colour")
    assert same.test == "chisquare" and not same.drifted

    flag = detect(reference, sample(rng, 400, flag_p=0.45)).feature("flag")
    assert (flag.test, flag.drifted) == ("z", True) and flag.statistic < -4  # 0.3 of ones, then about 0.45
    assert not detect(reference, sample(rng, 400)).feature("flag").drifted

    data = sample(rng, 400)
    data["colour"][:40] = "purple"  # a value the reference never had: chi-squared's expected count is 0
    unseen = detect(reference, data).feature("colour")
    assert unseen.drifted and unseen.score == 0.0 and unseen.statistic == float("inf")
    assert detect(reference, data).to_dict()["features"][7]["statistic"] is None  # JSON has no infinity


def test_psi(reference: dict) -> None:
    rng = np.random.default_rng(8)
    same = detect(reference, sample(rng, 20_000))
    assert all(f.psi is not None and f.psi < 0.01 for f in same.features), [
        (f.feature, f.psi) for f in same.features
    ]
    shifted = detect(reference, sample(rng, 20_000, shift=1.0)).feature("x0")
    assert shifted.psi > 0.2
    config = DriftConfig(feature_methods={"x0": "psi"}, feature_thresholds={"x0": 0.2})
    by_psi = detect(reference, sample(rng, 20_000, shift=1.0), config).feature("x0")
    assert (by_psi.test, by_psi.threshold, by_psi.drifted) == (
        "psi",
        0.2,
        True,
    ) and by_psi.score == by_psi.psi


def test_min_count_per_bin(reference: dict) -> None:
    rng = np.random.default_rng(9)
    data = sample(rng, 300, shift=1.0)
    data["x1"][:3] = [1e6, 2e6, -5.0]  # beyond the reference's range: tails of 1-2 rows
    data["colour"][:4] = ["purple", "purple", "pink", "red"]
    data["x4"][:5] = np.nan
    k = 25
    profile = current_profile(data, reference, predictions=rng.normal(size=300), min_count_per_bin=k)
    json.dumps(profile)  # what leaves the site is JSON
    for entry in (*profile["features"].values(), *profile["predictions"].values()):
        assert "min" not in entry and "max" not in entry and entry["count"] >= k
        emitted = [entry.get("other_count", 0), *entry.get("categories", {}).get("counts", [])]
        if "centroids" in entry:
            emitted += [*unpack(entry["centroids"]["counts"]).tolist(), *entry["histogram"]["counts"]]
            assert unpack(entry["centroids"]["counts"]).sum() == entry["count"]
        assert all(c == 0 or c >= k for c in emitted), emitted
    report = detect(reference, profile)
    assert report.feature("x0").drifted and report.feature("x4").current_missing_share == pytest.approx(
        5 / 300
    )
    exact = detect(reference, data).feature("x0")  # merging moves at most one group's rows: < 2k of them
    assert abs(exact.statistic - report.feature("x0").statistic) <= 2 * k / 300

    tiny = current_profile({n: v[:10] for n, v in data.items()}, reference, min_count_per_bin=k)
    assert all(f.get("suppressed") for f in tiny["features"].values())
    assert {f.test for f in detect(reference, tiny).features} == {"none"}


@pytest.mark.parametrize("kind", ["normal", "lognormal", "poisson"])
@pytest.mark.parametrize(
    ("n_ref", "n_cur", "shift"), [(50_000, 500, 0.0), (50_000, 800, 0.12), (3000, 1000, 0.05)]
)
def test_agrees_with_scipy_on_raw_data(kind: str, n_ref: int, n_cur: int, shift: float) -> None:
    """KS's D within 0.002 of ks_2samp's and its p-value within 0.05 (asymptotic distribution, as ks_2samp's
    for large samples), the normed Wasserstein distance within 0.005 of wasserstein_distance / std."""
    rng = np.random.default_rng(n_cur)
    draw = {
        "normal": lambda n, s: rng.normal(s, 1.0, n),
        "lognormal": lambda n, s: rng.lognormal(s, 1.0, n),
        "poisson": lambda n, s: rng.poisson(6 + 2.5 * s, n).astype(np.float64),
    }[kind]
    raw_ref, raw_cur = draw(n_ref, 0.0), draw(n_cur, shift)
    reference = reference_profile({"v": raw_ref}, ["v"])
    ks = detect(reference, {"v": raw_cur}, DriftConfig(feature_methods={"v": "ks"})).features[0]
    wd = detect(reference, {"v": raw_cur}, DriftConfig(feature_methods={"v": "wasserstein"})).features[0]
    ref32, cur32 = (
        a.astype(np.float32).astype(np.float64) for a in (raw_ref, raw_cur)
    )  # what the model sees
    expected = stats.ks_2samp(ref32, cur32)
    assert ks.statistic == pytest.approx(expected.statistic, abs=0.002)
    assert ks.score == pytest.approx(expected.pvalue, abs=0.05)
    assert wd.score == pytest.approx(stats.wasserstein_distance(ref32, cur32) / ref32.std(), abs=0.005)


def test_nan_counted_apart(reference: dict) -> None:
    rng = np.random.default_rng(10)
    data = sample(rng, 2000)
    data["x0"][:500] = np.nan
    data["x1"][:10] = np.inf
    colours = data["colour"].astype(object)
    colours[:200] = None
    data["colour"] = colours
    report = detect(reference, data)
    x0 = report.feature("x0")
    assert (x0.current_rows, x0.current_missing_share, x0.reference_missing_share) == (1500, 0.25, 0.0)
    assert not x0.drifted and not x0.missing_drifted  # the values that are there did not move
    assert report.feature("x1").current_missing_share == 0.005
    assert report.feature("colour").current_missing_share == 0.1 and not report.feature("colour").drifted
    strict = detect(reference, data, DriftConfig(missing_share_delta=0.05))
    assert strict.feature("x0").missing_drifted and strict.feature("x0").drifted
    assert strict.feature("colour").drifted and not strict.feature("x1").drifted

    data["x2"][:] = np.nan  # no values left: drifted, nothing to test
    gone = detect(reference, data).feature("x2")
    assert (gone.test, gone.drifted, gone.score, gone.current_missing_share) == ("missing", True, None, 1.0)


def test_bad_input(reference: dict) -> None:
    rng = np.random.default_rng(11)
    data = sample(rng, 100)
    with pytest.raises(SpecError, match="no column"):
        detect(reference, {n: v for n, v in data.items() if n != "x3"})
    with pytest.raises(SpecError, match="shape"):
        detect(reference, np.zeros((10, 4)))
    with pytest.raises(SpecError, match="not among the feature names"):
        reference_profile(data, NAMES, categorical=["nope"])
    with pytest.raises(SpecError, match="repeat"):
        reference_profile(np.zeros((3, 2)), ["a", "a"])
    with pytest.raises(SpecError, match="numeric in the reference"):
        detect(reference, {**data, "x0": np.array(["a"] * 100)})
    with pytest.raises(SpecError, match="prediction 'prediction' has shape"):
        detect(reference, data, predictions=np.zeros(99))
    with pytest.raises(SpecError, match="not a reference profile"):
        detect({"features": {}}, data)
    other = reference_profile(data, NAMES, categorical=CATEGORICAL)
    with pytest.raises(SpecError, match="another reference"):
        detect(reference, current_profile(data, other))
    with pytest.raises(SpecError, match="unknown drift method"):
        DriftConfig(feature_methods={"x0": "t-test"})  # type: ignore[dict-item]
    with pytest.raises(SpecError, match="does not apply"):
        detect(reference, data, DriftConfig(feature_methods={"colour": "ks"}))
    with pytest.raises(SpecError, match="drift_share"):
        DriftConfig(drift_share=0)


def test_array_input_and_json_round_trip(reference: dict) -> None:
    rng = np.random.default_rng(12)
    numeric = np.column_stack([sample(rng, 3000)[n] for n in NUMERIC])
    ref = reference_profile(numeric, NUMERIC)
    for name, entry in card_profile(numeric, NUMERIC)["features"].items():
        assert entry.keys() <= ref["features"][name].keys()  # extends the model card's profile
        assert entry["mean"] == pytest.approx(ref["features"][name]["mean"], rel=1e-6)
    loaded = json.loads(json.dumps(ref))
    current = np.column_stack([sample(rng, 2000)[n] for n in NUMERIC]).astype(np.float32)  # as served
    assert detect(loaded, current).to_dict() == detect(ref, current).to_dict()
    shuffled = current_profile(current[:, ::-1], loaded, feature_names=NUMERIC[::-1])
    assert detect(ref, shuffled).to_dict() == detect(ref, current).to_dict()
    assert len(json.dumps(reference)) < 60_000  # 6 numeric features, 3 categorical, a numeric prediction


def test_pandas_and_arrow_inputs(reference: dict) -> None:
    pd, pa = pytest.importorskip("pandas"), pytest.importorskip("pyarrow")
    rng = np.random.default_rng(15)
    data = sample(rng, 3000)
    frame = pd.DataFrame(data).astype({"colour": object})
    frame.loc[:99, "colour"] = None
    frame.loc[:49, "x1"] = np.nan
    from_frame = detect(reference, frame)
    assert from_frame.feature("colour").current_missing_share == pytest.approx(100 / 3000)
    assert from_frame.feature("x1").current_missing_share == pytest.approx(50 / 3000)
    from_arrow = detect(reference, pa.Table.from_pandas(frame))
    assert from_arrow.to_dict() == from_frame.to_dict()


def test_schema_skew(reference: dict) -> None:
    served = {n: "float32" for n in NAMES if n != "x5"} | {
        "colour": "<U5",
        "code": "float64",
        "extra": "int64",
    }
    skew = schema_skew(reference, served)
    assert (skew.missing, skew.extra, skew.order_changed) == (("x5",), ("extra",), False)
    changes = {c.feature: c for c in skew.type_changes}
    assert set(changes) == {"flag", "code"}  # float64 -> float32 is the same class; colour stays text
    assert not changes["flag"].breaking and not changes["code"].breaking
    assert schema_skew(reference, NAMES).ok
    assert schema_skew(reference, NAMES[::-1]).order_changed
    broken = schema_skew(reference, {**dict.fromkeys(NAMES, "float64"), "x0": "object", "colour": "float32"})
    assert {c.feature for c in broken.type_changes if c.breaking} == {"x0", "colour"}
    rng = np.random.default_rng(13)
    assert schema_skew(reference, current_profile(sample(rng, 100), reference)).type_changes == ()
    assert json.dumps(skew.to_dict())
