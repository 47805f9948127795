"""The cost ledger on SQLite and PostgreSQL: entries, periods, tags, budgets, egress rates between sites."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from archipel.cost.ledger import add_entry, budget_status, egress_rate, entries, period_start, spent
from archipel.db import connect, session_scope
from archipel.models.cost import BudgetSpec

NOW = datetime(2026, 11, 18, 15, 30, tzinfo=UTC)  # a Wednesday


@pytest.fixture
def engine(db_url: str):
    engine = connect(db_url)
    yield engine
    engine.dispose()


def _egress(session, amount_gb: float, at: datetime, **tags: str) -> None:
    add_entry(
        session,
        kind="egress",
        site="aws-us-east-1",
        dest_site="gcp-europe-west4",
        provider="aws",
        quantity=amount_gb,
        unit="GB",
        unit_price_usd=0.09,
        tags=tags,
        at=at,
    )


def test_periods_are_calendar_periods_in_utc() -> None:
    assert period_start("day", NOW) == datetime(2026, 11, 18, tzinfo=UTC)
    assert period_start("week", NOW) == datetime(2026, 11, 16, tzinfo=UTC)
    assert period_start("month", NOW) == datetime(2026, 11, 1, tzinfo=UTC)
    assert period_start("total", NOW) is None
    with pytest.raises(ValueError, match="unknown period"):
        period_start("fortnight", NOW)


def test_spent_sums_by_period_and_tags(engine) -> None:
    with session_scope(engine) as session:
        _egress(session, 10, datetime(2026, 10, 30, tzinfo=UTC), team="research")  # last month
        _egress(session, 2, datetime(2026, 11, 2, tzinfo=UTC), team="research")
        _egress(session, 1, datetime(2026, 11, 18, 9, tzinfo=UTC), team="ops")
    with session_scope(engine) as session:
        assert spent(session, {"team": "research"}, "month", now=NOW) == pytest.approx(0.18)
        assert spent(session, None, "month", now=NOW) == pytest.approx(0.27)
        assert spent(session, None, "day", now=NOW) == pytest.approx(0.09)
        assert spent(session, None, "total", now=NOW) == pytest.approx(1.17)
        assert spent(session, None, "total", sites=["gcp-europe-west4"], now=NOW) == 0
        rows = entries(session, kind="egress")
        assert [r.quantity for r in rows] == [10, 2, 1] and rows[0].amount_usd == pytest.approx(0.9)


def test_budgets_report_what_is_left(engine) -> None:
    with session_scope(engine) as session:
        _egress(session, 5, datetime(2026, 11, 10, tzinfo=UTC), team="research")
    budgets = {
        "research": BudgetSpec(amount_usd=0.4, period="month", tags={"team": "research"}),
        "ops": BudgetSpec(amount_usd=1, period="week", tags={"team": "ops"}),
    }
    with session_scope(engine) as session:
        status = {b.name: b for b in budget_status(session, budgets, now=NOW)}
    assert status["research"].spent_usd == pytest.approx(0.45) and status["research"].exceeded
    assert status["research"].remaining_usd == pytest.approx(-0.05)
    assert status["ops"].spent_usd == 0 and not status["ops"].exceeded


def test_negative_quantities_are_refused(engine) -> None:
    with session_scope(engine) as session, pytest.raises(ValueError):
        _egress(session, -1, NOW)


def test_egress_rates_follow_the_sender(demo_workspace) -> None:
    # AWS us-east-1 -> GCP: internet egress at AWS's rate; on-prem sends for free; GCP to GCP stays on GCP's network
    assert egress_rate(demo_workspace, "aws-us-east-1", "gcp-europe-west4") > 0
    assert egress_rate(demo_workspace, "onprem-frankfurt", "aws-us-east-1") == 0
    aws = egress_rate(demo_workspace, "aws-us-east-1", "onprem-frankfurt")
    assert aws == demo_workspace.catalog.egress.rate("aws", "internet").price_per_gb
