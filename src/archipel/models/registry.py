"""Models as users configure them under ``models:`` in ``archipel.yaml``: promotion gates per alias."""

from __future__ import annotations

from pydantic import Field, field_validator

from archipel.models.common import StrictModel
from archipel.models.gates import parse_clause

__all__ = ["ModelSpec"]


class ModelSpec(StrictModel):
    """What the registry checks before an alias moves to a version of this model."""

    gates: dict[str, list[str]] = Field(default_factory=dict)
    """Alias -> clauses that must all hold to promote a version to it, e.g.
    {production: ["auc >= 0.9", "auc >= production.auc - 0.005"]}. A clause compares a metric of the candidate
    version with a number or with a metric of the version another alias points to (plus or minus a number)."""
    description: str = ""

    @field_validator("gates")
    @classmethod
    def _parse(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for clauses in value.values():
            for clause in clauses:
                parse_clause(clause)
        return value
