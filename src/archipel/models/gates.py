"""Promotion gates: clauses like ``auc >= 0.9`` or ``auc >= production.auc - 0.005``, parsed and evaluated
purely. A clause names a metric of the candidate, an operator, and a number or another alias's metric with an
optional offset; a clause whose metric is missing fails (it is never skipped), except that a comparison with an
alias that points to nothing yet holds (the first version to reach ``production`` has nothing to beat)."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["Clause", "ClauseResult", "evaluate_gate", "parse_clause"]

_CLAUSE = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][\w.-]*)\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    r"(?:(?P<number>[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|"
    r"(?P<alias>[a-z][a-z0-9-]*)\.(?P<ref>[A-Za-z_][\w.-]*)\s*(?:(?P<sign>[-+])\s*(?P<offset>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?))?)"
    r"\s*$"
)
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne,
}  # fmt: skip


@dataclass(frozen=True)
class Clause:
    text: str
    metric: str
    op: str
    number: float | None = None
    alias: str | None = None
    ref_metric: str | None = None
    offset: float = 0.0


@dataclass(frozen=True)
class ClauseResult:
    clause: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str

    def as_json(self) -> dict[str, object]:
        return self.__dict__.copy()


def parse_clause(text: str) -> Clause:
    """ValueError shows the accepted form."""
    m = _CLAUSE.match(text)
    if not m:
        raise ValueError(
            f"gate clause {text!r} is not METRIC OP NUMBER or METRIC OP ALIAS.METRIC [+|- NUMBER] "
            "(e.g. 'auc >= 0.9', 'auc >= production.auc - 0.005')"
        )
    if m["number"] is not None:
        return Clause(text.strip(), m["metric"], m["op"], number=float(m["number"]))
    offset = float(m["offset"] or 0.0) * (-1 if m["sign"] == "-" else 1)
    return Clause(text.strip(), m["metric"], m["op"], alias=m["alias"], ref_metric=m["ref"], offset=offset)


def evaluate_gate(
    clauses: list[str], metrics: Mapping[str, float], aliases: Mapping[str, Mapping[str, float] | None]
) -> list[ClauseResult]:
    """Every clause against the candidate's ``metrics``; ``aliases`` maps an alias to the metrics of the
    version it points to (None when it points to nothing)."""
    results = []
    for text in clauses:
        c = parse_clause(text)
        value = metrics.get(c.metric)
        if c.number is not None:
            threshold: float | None = c.number
            source = f"{c.number:g}"
        else:
            assert c.alias is not None and c.ref_metric is not None
            other = aliases.get(c.alias)
            if other is None:
                results.append(ClauseResult(c.text, True, value, None, f"no version is {c.alias} yet"))
                continue
            ref = other.get(c.ref_metric)
            if ref is None:
                results.append(
                    ClauseResult(c.text, False, value, None, f"{c.alias} has no metric {c.ref_metric}")
                )
                continue
            threshold = ref + c.offset
            source = f"{c.alias}.{c.ref_metric} {ref:g}" + (f" {c.offset:+g}" if c.offset else "")
        if value is None:
            results.append(
                ClauseResult(c.text, False, None, threshold, f"the version has no metric {c.metric}")
            )
            continue
        passed = _OPS[c.op](value, threshold)
        results.append(
            ClauseResult(
                c.text, passed, value, threshold, f"{c.metric} {value:g} {c.op} {source} is {passed}"
            )
        )
    return results
