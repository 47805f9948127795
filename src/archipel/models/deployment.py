"""Deployments as users write them (``archipel deploy FILE``): a model alias served at sites behind the gateway."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, WithJsonSchema, field_validator, model_validator

from archipel.models.common import Name, StrictModel

__all__ = ["Batching", "Canary", "DeploymentSpec", "Monitoring", "Replicas", "Slo"]


class Replicas(StrictModel):
    min: int = Field(1, ge=0, le=64)
    """Replicas per site."""
    max: int = Field(1, ge=1, le=64)
    target_qps: float | None = Field(None, gt=0)
    """Autoscaling between min and max: requests per second one replica should take (measured by the replicas)."""

    @model_validator(mode="after")
    def _bounds(self) -> Replicas:
        if self.max < self.min:
            raise ValueError(f"replicas.max ({self.max}) is below replicas.min ({self.min})")
        return self


class Batching(StrictModel):
    max_batch: int = Field(64, ge=1, le=4096)
    max_wait_ms: float = Field(0.0, ge=0, le=1000)
    """0 batches what is already queued; a wait pays only for models whose row costs ~100 us or more."""


ModelRef = Annotated[str, WithJsonSchema({
    "type": "string", "pattern": r"^(models:/)?[a-z0-9][a-z0-9-]{0,62}(/[1-9][0-9]*|@[a-z][a-z0-9-]{0,62})$",
    "description": "A model version: NAME@ALIAS or NAME/N."})]  # fmt: skip
"""A model version reference as a deployment names it (checked by ``DeploymentSpec._ref`` and the registry)."""


class Canary(StrictModel):
    """A second version taking a share of the traffic, at the same sites."""

    model: str
    """NAME/N or NAME@ALIAS of the canary version."""
    weight: float = Field(gt=0, lt=1)
    """Share of requests it serves (among the replicas a request may use)."""


class Slo(StrictModel):
    """Service levels checked on the replicas' own counters; a breach raises an ``slo`` alert."""

    error_rate: float = Field(0.01, ge=0, le=1)
    """Largest share of answers with a 5xx status."""
    p99_ms: float = Field(250.0, gt=0)
    """Largest 99th percentile of the time from request to answer, in milliseconds."""


class Monitoring(StrictModel):
    """Drift monitoring where the samples are: ``archipel monitor run`` (and ``archipel server``, every
    ``every_s``) compares each site's recent samples with the model version's reference."""

    window_s: float = Field(3600.0, gt=0)
    """How far back the samples of one check reach."""
    every_s: float = Field(3600.0, ge=10)
    """How often ``archipel server`` checks."""
    min_rows: int = Field(100, ge=1)
    """Fewer sampled rows than this at a site: no verdict there (too little to tell)."""
    min_count_per_bin: int = Field(10, ge=1)
    """Every number that leaves a site describes at least this many rows (histogram bins, category counts)."""
    drift_share: float = Field(0.5, gt=0, le=1)
    """Dataset drift when at least this share of the features drifted."""
    slo: Slo = Field(default_factory=Slo)


class DeploymentSpec(StrictModel):
    """A model served at one or more sites."""

    name: Name
    model: str
    """NAME@ALIAS (or NAME/N); the version behind an alias is pinned when deployed."""
    sites: list[Name] | Literal["auto"] = "auto"
    """Where replicas run; auto: every site the model's training data allows it to be copied to."""
    replicas: Replicas = Field(default_factory=Replicas)
    batching: Batching = Field(default_factory=Batching)
    canary: Canary | None = None
    sample_rate: float = Field(0.05, ge=0, le=1)
    """Share of requests kept with their predictions in each replica's own site storage (for drift monitoring);
    0 turns sampling off."""
    prefer_local: bool = True
    """Route a request to a replica in its origin's jurisdiction when one is ready."""
    monitoring: Monitoring = Field(default_factory=Monitoring)

    @field_validator("model")
    @classmethod
    def _ref(cls, value: str) -> str:
        if "@" not in value and "/" not in value:
            raise ValueError(f"model {value!r}: write NAME@ALIAS or NAME/N")
        return value
