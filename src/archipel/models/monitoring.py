"""What ``archipel.yaml`` says about alerts: where they are sent (``alerts:``) and what they start (``triggers:``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from archipel.models.common import Name, StrictModel

__all__ = ["AlertsSpec", "TriggerSpec"]


class AlertsSpec(StrictModel):
    webhook: str | None = None
    """An http(s) URL each alert is POSTed to as JSON (kind, deployment, site, reason, details)."""

    @field_validator("webhook")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"webhook {value!r}: write an http:// or https:// URL")
        return value


class TriggerSpec(StrictModel):
    """An alert of a deployment starts a retraining pipeline; the version it registers goes through the alias's
    promotion gates and, when it passes, rolls out to the deployment."""

    deployment: Name
    on: list[Literal["drift", "slo"]] = Field(default_factory=lambda: ["drift"], min_length=1)
    """Which alerts fire it."""
    pipeline: str
    """A job or pipeline spec, as ``archipel run`` takes, relative to the workspace folder; it must register a new
    version of the deployment's model (``ctx.log_model``)."""
    promote_to: Name = "production"
    """The alias the new version must pass the gates of (``models.<name>.gates`` in ``archipel.yaml``)."""
    rollout: bool = True
    """Roll a promoted version out to the deployment (a rolling update)."""
    cooldown_s: float = Field(3600.0, ge=0)
    """An alert within this long of the trigger's last firing does not fire it again."""
