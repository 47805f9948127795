"""``archipel cost`` in-process: the table and budgets, --json figures, --by tag --tag, --since, usage errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from archipel.cli.cost_cmds import GroupOpt
from archipel.cost.ledger import add_entry
from archipel.cost.report import GROUPS
from archipel.db import connect, session_scope
from tests.cli.conftest import run

BUDGETS = """
budgets:
  research: {amount_usd: 2, period: total, tags: {team: research}}
  everything: {amount_usd: 10, period: total}
"""

AMOUNTS = [3.0, 0.27, 0.5, 1.0]  # what _ledger inserts, in its order


@pytest.fixture
def ws(demo_workspace):
    """The demo workspace with two all-time budgets and four ledger entries ($4.77) over five days."""
    with demo_workspace.file.open("a", encoding="utf-8") as f:
        f.write(BUDGETS)
    engine = connect(demo_workspace.db_url)
    with session_scope(engine) as session:
        _ledger(session, datetime.now(UTC))
    engine.dispose()
    return demo_workspace


def _ledger(session, now: datetime) -> None:
    add_entry(
        session, kind="compute", site="aws-us-east-1", provider="aws", quantity=2, unit="h", unit_price_usd=1.5,
        tags={"team": "research"}, run_id="run-a", at=now - timedelta(minutes=30),
    )  # fmt: skip
    add_entry(
        session, kind="egress", site="aws-us-east-1", dest_site="gcp-europe-west4", provider="aws", quantity=3,
        unit="GB", unit_price_usd=0.09, tags={"team": "research"}, at=now - timedelta(hours=1),
    )  # fmt: skip
    add_entry(
        session, kind="compute", site="gcp-europe-west4", provider="gcp", quantity=1, unit="h",
        unit_price_usd=0.5, tags={"team": "ops"}, run_id="run-b", at=now - timedelta(days=3),
    )  # fmt: skip
    add_entry(
        session, kind="serving", site="onprem-frankfurt", provider="onprem", quantity=10, unit="h",
        unit_price_usd=0.1, at=now - timedelta(days=5),
    )  # fmt: skip


def _cost(capsys, ws, *args: str) -> tuple[int, str, str]:
    return run(capsys, "-w", str(ws.root), "cost", *args)


def _json(capsys, ws, *args: str) -> dict:
    code, out, err = _cost(capsys, ws, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_table_lists_rows_by_total_then_budgets(ws, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cost(capsys, ws)
    assert code == 0, err
    assert "Cost by site, largest first" in out
    lines = out.splitlines()
    aws, onprem, gcp = (next(i for i, line in enumerate(lines) if site in line) for site in
                        ("aws-us-east-1", "onprem-frankfurt", "gcp-europe-west4"))  # fmt: skip
    assert aws < onprem < gcp
    assert "$3.00" in lines[aws] and "$0.2700" in lines[aws] and "$3.27" in lines[aws]
    assert "$1.00" in lines[onprem] and "$0.5000" in lines[gcp]
    [total] = [line for line in lines if line.strip("│ ").startswith("total")]
    assert "$3.50" in total and "$0.2700" in total and "$4.77" in total
    budgets = out[out.index("Budgets") :]
    [research] = [line for line in budgets.splitlines() if "research" in line]
    assert "$3.27" in research and "163.5%" in research and "OVER" in research
    assert "-$1.27" in research  # what is left is negative
    [everything] = [line for line in budgets.splitlines() if "everything" in line]
    assert "$5.23" in everything and "47.7%" in everything and "ok" in everything


def test_json_totals_equal_what_was_inserted(ws, capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, ws)
    assert data["by"] == "site" and data["since"] is None
    assert data["total"]["total_usd"] == pytest.approx(sum(AMOUNTS))
    assert data["total"]["entries"] == len(AMOUNTS)
    assert data["total"]["compute_usd"] == pytest.approx(3.5)
    assert data["total"]["egress_usd"] == pytest.approx(0.27)
    assert data["total"]["other_usd"] == pytest.approx(1.0)
    assert sum(r["total_usd"] for r in data["rows"]) == pytest.approx(sum(AMOUNTS))
    assert [(r["key"], r["total_usd"], r["entries"]) for r in data["rows"]] == [
        ("aws-us-east-1", 3.27, 2),
        ("onprem-frankfurt", 1.0, 1),
        ("gcp-europe-west4", 0.5, 1),
    ]
    budgets = {b["name"]: b for b in data["budgets"]}
    assert budgets["research"]["spent_usd"] == pytest.approx(3.27) and budgets["research"]["exceeded"]
    assert budgets["research"]["percent_used"] == pytest.approx(163.5)
    assert budgets["everything"]["remaining_usd"] == pytest.approx(10 - sum(AMOUNTS))


def test_by_tag_groups_on_the_tag_value(ws, capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, ws, "--by", "tag", "--tag", "team")
    assert data["by"] == "tag" and data["tag_key"] == "team"
    assert {r["key"]: r["total_usd"] for r in data["rows"]} == pytest.approx(
        {"research": 3.27, "(untagged)": 1.0, "ops": 0.5}
    )
    code, out, _ = _cost(capsys, ws, "--by", "tag", "--tag", "team")
    assert code == 0 and "Cost by tag team" in out and "(untagged)" in out


def test_other_groupings(ws, capsys: pytest.CaptureFixture[str]) -> None:
    runs = _json(capsys, ws, "--by", "run")
    assert {r["key"]: r["total_usd"] for r in runs["rows"]} == pytest.approx(
        {"run-a": 3.0, "(no run)": 1.27, "run-b": 0.5}
    )
    kinds = _json(capsys, ws, "--by", "kind")
    assert [r["key"] for r in kinds["rows"]] == ["compute", "serving", "egress"]
    days = _json(capsys, ws, "--by", "day")
    assert sum(r["entries"] for r in days["rows"]) == 4 and len(days["rows"]) >= 3


def test_since_filters_rows_but_not_budgets(ws, capsys: pytest.CaptureFixture[str]) -> None:
    recent = _json(capsys, ws, "--since", "2h")
    assert [(r["key"], r["total_usd"]) for r in recent["rows"]] == [("aws-us-east-1", 3.27)]
    assert recent["total"]["total_usd"] == pytest.approx(3.27) and recent["total"]["entries"] == 2
    assert {b["name"]: b["spent_usd"] for b in recent["budgets"]} == pytest.approx(
        {"research": 3.27, "everything": sum(AMOUNTS)}
    )
    iso = (datetime.now(UTC) - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M:%S")  # naive ISO reads as UTC
    four_days = _json(capsys, ws, "--since", iso, "--by", "provider")
    assert {r["key"]: r["total_usd"] for r in four_days["rows"]} == pytest.approx({"aws": 3.27, "gcp": 0.5})
    code, out, _ = _cost(capsys, ws, "--since", "7d", "--by", "kind")
    assert code == 0 and "since" in out and "$4.77" in out


def test_the_by_choices_are_the_report_groupings() -> None:
    assert tuple(g.value for g in GroupOpt) == GROUPS


def test_usage_errors_exit_2(ws, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cost(capsys, ws, "--by", "tag")
    assert code == 2 and "--by tag needs --tag KEY" in err and out == ""
    code, _, err = _cost(capsys, ws, "--by", "site", "--tag", "team")
    assert code == 2 and "--tag': applies only with --by tag" in err
    code, _, err = _cost(capsys, ws, "--by", "team")
    assert code == 2 and "'team' is not one of" in err
    code, _, err = _cost(capsys, ws, "--since", "last tuesday")
    assert code == 2 and "--since 'last tuesday'" in err


def test_empty_ledger_and_the_command_workspace_option(
    demo_workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "cost", "--workspace", str(demo_workspace.root))
    assert code == 0, err
    assert "No cost entries." in out and "Budgets" not in out
    code, out, _ = run(capsys, "cost", "-w", str(demo_workspace.root), "--json")
    data = json.loads(out)
    assert code == 0 and data["rows"] == [] and data["total"]["total_usd"] == 0 and data["budgets"] == []
