"""The workspace spec: what ``archipel.yaml`` holds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from archipel.models.common import Name, StrictModel
from archipel.models.cost import BudgetSpec
from archipel.models.monitoring import AlertsSpec, TriggerSpec
from archipel.models.policy import PolicyRule
from archipel.models.registry import ModelSpec
from archipel.models.site import SiteSpec

__all__ = ["CatalogSpec", "WorkspaceSpec"]


class CatalogSpec(StrictModel):
    """Price catalog additions: your own CSVs in SkyPilot's catalog columns."""

    files: list[str] = Field(default_factory=list)
    """CSV files (relative to the workspace) whose rows add to or replace the bundled prices."""


class WorkspaceSpec(StrictModel):
    """``archipel.yaml``: the sites of a team and how archipel treats them."""

    version: Literal[1] = 1
    """Spec format version."""
    name: Name = "default"
    """Workspace name, shown in reports."""
    metadata_store: str | None = None
    """SQLAlchemy URL of the metadata store; default a SQLite file in the state directory.
    ARCHIPEL_DB_URL overrides it. Never write a password here: use ARCHIPEL_DB_URL."""
    catalog: CatalogSpec = Field(default_factory=CatalogSpec)
    sites: dict[Name, SiteSpec] = Field(default_factory=dict)
    """Sites keyed by name (lowercase letters, digits, '-')."""
    policies: list[PolicyRule] = Field(default_factory=list)
    """Residency rules, first match wins; the built-in defaults follow them (pii and phi stay in their
    origin jurisdiction). See `archipel policy defaults`."""
    budgets: dict[Name, BudgetSpec] = Field(default_factory=dict)
    """Spending limits keyed by name, checked against the cost ledger."""
    models: dict[Name, ModelSpec] = Field(default_factory=dict)
    """Per model: the promotion gates of its aliases."""
    alerts: AlertsSpec = Field(default_factory=AlertsSpec)
    """Where drift and service-level alerts are sent besides the audit log, the log and the metrics."""
    triggers: dict[Name, TriggerSpec] = Field(default_factory=dict)
    """Keyed by name: which alerts of which deployment start which retraining pipeline."""

    @field_validator("policies")
    @classmethod
    def _unique_rule_names(cls, value: list[PolicyRule]) -> list[PolicyRule]:
        seen: set[str] = set()
        for rule in value:
            if rule.name in seen:
                raise ValueError(f"two policy rules are named {rule.name!r}; rule names must be unique")
            seen.add(rule.name)
        return value

    @field_validator("metadata_store")
    @classmethod
    def _no_password_in_file(cls, value: str | None) -> str | None:
        if value and "://" in value:
            netloc = value.split("://", 1)[1].split("/", 1)[0]
            if "@" in netloc and ":" in netloc.split("@", 1)[0]:
                raise ValueError(
                    "metadata_store embeds a password; set ARCHIPEL_DB_URL in the environment instead"
                )
        return value
