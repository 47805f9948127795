"""Residency and classification policies, as users write them under ``policies:`` in ``archipel.yaml``.

Rules are read top to bottom; the first whose ``match`` fits the data governs it, and the built-in defaults
(see :data:`archipel.policy.engine.DEFAULT_RULES`) come after the user's rules. Each action is a permission:
``true`` (anywhere), ``false`` (nowhere) or a site selector whose conditions must all hold.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from archipel.models.common import Name, StrictModel
from archipel.models.site import Provider

__all__ = [
    "ACTIONS",
    "CLASSIFICATIONS",
    "Action",
    "Classification",
    "Permission",
    "PolicyRule",
    "RuleMatch",
    "SiteSelector",
]

Classification = Literal["public", "internal", "confidential", "pii", "phi"]
CLASSIFICATIONS: tuple[str, ...] = ("public", "internal", "confidential", "pii", "phi")
Action = Literal["store", "process", "replicate", "derive_export", "serve", "aggregate_export"]
ACTIONS: tuple[str, ...] = ("store", "process", "replicate", "derive_export", "serve", "aggregate_export")

_JURISDICTION_OR_TOKEN = re.compile(r"^([A-Z]{2,3}(-[A-Z0-9]{1,4})?|origin|requester)$")


class SiteSelector(StrictModel):
    """Sites that satisfy every condition given (an empty selector matches every site)."""

    jurisdictions: list[str] | None = None
    """Jurisdiction codes (a site in DE is within EU, one in US-CA within US), or the tokens ``origin`` (the
    data's origin jurisdiction) and ``requester`` (the jurisdiction a request comes from; for serve)."""
    providers: list[Provider] | None = None
    """Providers allowed, e.g. [onprem, gcp]."""
    sites: list[Name] | None = None
    """Site names allowed."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels the site must carry, e.g. {tier: datacenter}."""

    @field_validator("jurisdictions")
    @classmethod
    def _codes(cls, value: list[str] | None) -> list[str] | None:
        for code in value or []:
            if not _JURISDICTION_OR_TOKEN.match(code):
                raise ValueError(
                    f"{code!r} is neither a jurisdiction code (EU, US, DE, US-CA) nor 'origin' or 'requester'"
                )
        return value


Permission = bool | SiteSelector


class RuleMatch(StrictModel):
    """Which data a rule governs; every condition given must hold (an empty match governs all data)."""

    classifications: list[Literal["public", "internal", "confidential", "pii", "phi"]] | None = None
    jurisdictions: list[str] | None = None
    """Origin jurisdictions of the data (DE data is within EU)."""
    datasets: list[Name] | None = None
    """Dataset names (models derived from them inherit the rule)."""
    labels: dict[str, str] = Field(default_factory=dict)


class PolicyRule(StrictModel):
    """What may happen to the data a rule matches, and where."""

    name: Name
    description: str = ""
    match: RuleMatch = Field(default_factory=RuleMatch)
    store: Permission = True
    """Sites where the data (and its replicas) may be stored."""
    process: Permission = True
    """Sites where jobs may read the data."""
    derive_export: Permission = True
    """Sites where models and checkpoints derived from the data may go."""
    serve: Permission = True
    """Sites where a request may be served by a model derived from the data (``requester`` = the request's own
    jurisdiction)."""
    aggregate_export: bool = True
    """Whether statistics computed from the data (drift reports, metrics) may leave the site."""
    encrypt_at_rest: bool = False
    """Store the data only sealed (AES-256-GCM) with the site's key; sites without a key are refused."""
