"""The cost report on SQLite and PostgreSQL: grouping, the kind split, sorting, since, budgets beside the rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from archipel.cost.ledger import add_entry
from archipel.cost.report import NO_RUN, UNTAGGED, report
from archipel.db import connect, session_scope
from archipel.errors import SpecError
from archipel.models.cost import BudgetSpec

NOW = datetime(2026, 11, 18, 15, 30, tzinfo=UTC)  # a Wednesday


@pytest.fixture
def engine(db_url: str):
    engine = connect(db_url)
    with session_scope(engine) as session:
        _ledger(session)
    yield engine
    engine.dispose()


def _ledger(session) -> None:
    """Five entries, $5.02 in all: compute at two sites, egress, one serving line (an ``other`` kind)."""

    def compute(site: str, provider: str, hours: float, price: float, at: datetime, run: str, **tags: str):
        add_entry(
            session, kind="compute", site=site, provider=provider, quantity=hours, unit="h",
            unit_price_usd=price, tags=tags, run_id=run, at=at,
        )  # fmt: skip

    compute("aws-us-east-1", "aws", 2, 1.5, NOW - timedelta(hours=1), "run-a", team="research")  # $3.00
    compute("gcp-europe-west4", "gcp", 1, 0.5, NOW - timedelta(days=3), "run-b", team="ops")  # $0.50
    compute("aws-us-east-1", "aws", 1, 0.25, NOW - timedelta(days=40), "run-a", team="research")  # $0.25
    add_entry(
        session, kind="egress", site="aws-us-east-1", dest_site="gcp-europe-west4", provider="aws",
        quantity=3, unit="GB", unit_price_usd=0.09, tags={"team": "research"}, at=NOW - timedelta(hours=2),
    )  # fmt: skip  # $0.27
    add_entry(
        session, kind="serving", site="onprem-frankfurt", provider="onprem", quantity=10, unit="h",
        unit_price_usd=0.1, at=NOW - timedelta(days=1),
    )  # fmt: skip  # $1.00, untagged, no run


def _rows(result) -> dict[str, tuple[float, float, float, float, int]]:
    return {r.key: (r.compute_usd, r.egress_usd, r.other_usd, r.total_usd, r.entries) for r in result.rows}


def _same(rows: dict[str, tuple], expected: dict[str, tuple]) -> None:
    assert list(rows) == list(expected)
    for key, figures in expected.items():
        assert rows[key] == pytest.approx(figures), key


def test_by_site_splits_kinds_and_sorts_by_total(engine) -> None:
    with session_scope(engine) as session:
        result = report(session, by="site", since=None)
    assert [r.key for r in result.rows] == ["aws-us-east-1", "onprem-frankfurt", "gcp-europe-west4"]
    rows = _rows(result)
    assert rows["aws-us-east-1"] == pytest.approx((3.25, 0.27, 0, 3.52, 3))
    assert rows["onprem-frankfurt"] == pytest.approx((0, 0, 1.0, 1.0, 1))
    assert rows["gcp-europe-west4"] == pytest.approx((0.5, 0, 0, 0.5, 1))
    t = result.total
    assert (t.compute_usd, t.egress_usd, t.other_usd, t.total_usd, t.entries) == pytest.approx(
        (3.75, 0.27, 1.0, 5.02, 5)
    )
    assert result.budgets == ()


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        ("provider", {"aws": 3.52, "onprem": 1.0, "gcp": 0.5}),
        ("kind", {"compute": 3.75, "serving": 1.0, "egress": 0.27}),
        ("run", {"run-a": 3.25, NO_RUN: 1.27, "run-b": 0.5}),
        ("day", {"2026-11-18": 3.27, "2026-11-17": 1.0, "2026-11-15": 0.5, "2026-10-09": 0.25}),
    ],
)
def test_every_grouping_sums_to_the_total(engine, by: str, expected: dict[str, float]) -> None:
    with session_scope(engine) as session:
        result = report(session, by=by, since=None)  # type: ignore[arg-type]
    assert [r.key for r in result.rows] == list(expected)
    assert {r.key: r.total_usd for r in result.rows} == pytest.approx(expected)
    assert sum(r.total_usd for r in result.rows) == pytest.approx(result.total.total_usd) == 5.02


def test_by_tag_groups_on_the_value_and_keeps_the_untagged(engine) -> None:
    with session_scope(engine) as session:
        result = report(session, by="tag", since=None, tag_key="team")
        assert report(session, by="tag", since=None, tag_key="project").rows[0].key == UNTAGGED
    assert result.tag_key == "team"
    _same(
        _rows(result),
        {"research": (3.25, 0.27, 0, 3.52, 3), UNTAGGED: (0, 0, 1.0, 1.0, 1), "ops": (0.5, 0, 0, 0.5, 1)},
    )


def test_since_limits_rows_and_total(engine) -> None:
    with session_scope(engine) as session:
        result = report(session, by="site", since=NOW - timedelta(hours=3))
    _same(_rows(result), {"aws-us-east-1": (3.0, 0.27, 0, 3.27, 2)})
    assert result.total.total_usd == pytest.approx(3.27) and result.total.entries == 2


def test_budgets_count_their_own_period_not_since(engine) -> None:
    budgets = {
        "research": BudgetSpec(amount_usd=3, period="month", tags={"team": "research"}),
        "everything": BudgetSpec(amount_usd=10, period="total"),
        "frankfurt": BudgetSpec(amount_usd=2, period="week", sites=["onprem-frankfurt"]),
    }
    with session_scope(engine) as session:
        result = report(session, by="kind", since=NOW - timedelta(hours=3), budgets=budgets, now=NOW)
    status = {b.name: b for b in result.budgets}
    assert [b.name for b in result.budgets] == ["research", "everything", "frankfurt"]
    assert status["research"].spent_usd == pytest.approx(3.27) and status["research"].exceeded
    assert status["everything"].spent_usd == pytest.approx(5.02) and not status["everything"].exceeded
    assert status["frankfurt"].remaining_usd == pytest.approx(1.0)
    data = result.as_json()
    by_name = {b["name"]: b for b in data["budgets"]}
    assert by_name["research"]["percent_used"] == pytest.approx(109.0)
    assert by_name["research"]["remaining_usd"] == pytest.approx(-0.27)
    assert by_name["everything"]["percent_used"] == pytest.approx(50.2)
    assert by_name["frankfurt"] == {
        "name": "frankfurt", "limit_usd": 2, "period": "week", "spent_usd": 1.0, "remaining_usd": 1.0,
        "exceeded": False, "percent_used": 50.0,
    }  # fmt: skip


def test_as_json_is_plain_data(engine) -> None:
    since = NOW - timedelta(days=30)
    with session_scope(engine) as session:
        data = report(session, by="site", since=since).as_json()
    assert data["by"] == "site" and data["tag_key"] is None and data["since"] == since.isoformat()
    assert data["rows"][0] == {
        "key": "aws-us-east-1", "compute_usd": 3.0, "egress_usd": 0.27, "other_usd": 0.0, "total_usd": 3.27,
        "entries": 2,
    }  # fmt: skip
    assert data["total"] == {
        "compute_usd": 3.5, "egress_usd": 0.27, "other_usd": 1.0, "total_usd": 4.77, "entries": 4,
    }  # fmt: skip


def test_an_empty_ledger_reports_zero(tmp_path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'empty.db'}")
    with session_scope(engine) as session:
        result = report(session, by="day", since=None)
    engine.dispose()
    assert result.rows == () and result.total.total_usd == 0 and result.total.entries == 0


def test_bad_groupings_are_spec_errors(engine) -> None:
    with session_scope(engine) as session:
        with pytest.raises(SpecError, match="needs the tag's key"):
            report(session, by="tag", since=None)
        with pytest.raises(SpecError, match="cannot group costs by 'team'"):
            report(session, by="team", since=None)  # type: ignore[arg-type]
