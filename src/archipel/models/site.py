"""Sites: the islands of an archipel workspace, as users write them in ``archipel.yaml``."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from archipel.models.common import GiB, StrictModel

__all__ = [
    "COMPUTE_SCHEMES",
    "PROVIDERS",
    "STORAGE_SCHEMES",
    "Capacity",
    "Location",
    "Provider",
    "SiteEncryption",
    "SitePricing",
    "SiteSpec",
]

Provider = Literal["aws", "gcp", "azure", "onprem", "edge", "local"]
PROVIDERS: tuple[str, ...] = ("aws", "gcp", "azure", "onprem", "edge", "local")
CLOUD_PROVIDERS: tuple[str, ...] = ("aws", "gcp", "azure")
STORAGE_SCHEMES: tuple[str, ...] = ("file", "s3", "gs", "az", "memory")
COMPUTE_SCHEMES: tuple[str, ...] = ("local", "ray+http", "ray+https")

_JURISDICTION = re.compile(r"^[A-Z]{2,3}(-[A-Z0-9]{1,4})?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")
_SECRET_WORDS = {"key", "secret", "password", "token", "credential", "credentials", "sas"}
_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9a-fA-F:]+\](:[0-9]{1,5})?$")


class Capacity(StrictModel):
    """What archipel may run at a site at once."""

    cpus: float = Field(4, gt=0)
    """Virtual CPUs available to archipel's jobs at this site."""
    memory: GiB = Field("16GiB", gt=0, validate_default=True)
    """Memory available to jobs: '16GiB' or a number of GiB."""
    accelerators: dict[str, int] = Field(default_factory=dict)
    """Accelerators by name and count, e.g. {A100: 8}."""

    @field_validator("accelerators")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        for name, count in value.items():
            if count < 0:
                raise ValueError(f"accelerator count for {name!r} cannot be negative")
        return value


class SitePricing(StrictModel):
    """Amortized prices for sites that own their hardware (on-prem, edge, local)."""

    cpu_hour: float = Field(0.0, ge=0)
    """USD per vCPU-hour (hardware, power, space and staff, amortized)."""
    memory_gib_hour: float = Field(0.0, ge=0)
    """USD per GiB-hour of memory."""
    accelerator_hour: dict[str, float] = Field(default_factory=dict)
    """USD per accelerator-hour, by accelerator name."""
    egress_per_gb: float | None = Field(None, ge=0)
    """USD per GB leaving this site; None uses the price catalog's figure for the provider."""


class SiteEncryption(StrictModel):
    """Where a site's data key comes from; the key itself never appears in this file."""

    key_env: str | None = None
    """Environment variable holding the 32-byte key (hex or base64)."""
    key_file: str | None = None
    """File holding the key (relative to the workspace); must not be readable by group or others."""

    @model_validator(mode="after")
    def _exactly_one(self) -> SiteEncryption:
        if (self.key_env is None) == (self.key_file is None):
            raise ValueError("encryption needs exactly one of key_env or key_file")
        return self


class Location(StrictModel):
    """Where a site is, for latency and bandwidth estimates."""

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    continent: str | None = None
    """Continent code (e.g. EU, NA); derived from the nearest known region when omitted."""


class SiteSpec(StrictModel):
    """One site: a place with its own storage, compute, prices and laws."""

    provider: Provider
    """Who runs the hardware: aws, gcp, azure, onprem, edge or local."""
    region: str = Field(min_length=1, max_length=64)
    """The provider's region (us-east-1, europe-west4) or, on-prem, a city (frankfurt)."""
    jurisdiction: str
    """Legal jurisdiction of the data held here, e.g. EU, US, US-CA, DE."""
    storage: str
    """Storage URL: file://path (relative to the workspace), s3://bucket/prefix, gs://..., az://..., memory://..."""
    storage_options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Options for the storage backend (endpoint_url, ...); keys ending in _env name environment variables
    holding secrets, which are never written into this file."""
    compute: str = "local"
    """Compute backend: local, or ray+http://HOST:8265 (the Ray Jobs API)."""
    capacity: Capacity = Field(default_factory=Capacity)
    offers: list[str] | None = None
    """Instance types this site may use (cloud providers); None means every offer of the region in the catalog."""
    pricing: SitePricing | None = None
    """Amortized prices; required for onprem and edge sites, free for local ones."""
    location: Location | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form labels that policies may select on (tier: gpu, owner: research)."""
    spot_preemption_per_hour: float | None = Field(None, ge=0)
    """Spot preemptions per hour at this site; None uses the provider's estimate (archipel.pricing.preemption)."""
    encryption: SiteEncryption | None = None
    """The site's data key for encryption at rest (required where a policy says encrypt_at_rest)."""
    enabled: bool = True
    """A disabled site is kept in the catalog but never planned onto."""

    @field_validator("jurisdiction")
    @classmethod
    def _jurisdiction(cls, value: str) -> str:
        if not _JURISDICTION.match(value):
            raise ValueError(
                f"{value!r} is not a jurisdiction code; use an upper-case code like EU, US, DE or US-CA"
            )
        return value

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        check_storage_url(value)
        return value

    @field_validator("compute")
    @classmethod
    def _compute(cls, value: str) -> str:
        check_compute_uri(value)
        return value

    @field_validator("storage_options")
    @classmethod
    def _no_inline_secrets(cls, value: dict[str, object]) -> dict[str, object]:
        for key in value:
            words = set(key.lower().split("_"))
            if "env" not in words and words & _SECRET_WORDS:
                raise ValueError(
                    f"storage option {key!r} looks like a secret; name an environment variable instead "
                    f"({key}_env: MY_VARIABLE) so the secret never lands in archipel.yaml"
                )
        return value

    @model_validator(mode="after")
    def _pricing_fits_provider(self) -> SiteSpec:
        if self.provider in ("onprem", "edge") and self.pricing is None:
            raise ValueError(
                f"an {self.provider} site needs 'pricing' (cpu_hour, memory_gib_hour) because the price catalog "
                "only knows public clouds"
            )
        if (
            self.provider in CLOUD_PROVIDERS
            and self.pricing is not None
            and (self.pricing.cpu_hour or self.pricing.memory_gib_hour or self.pricing.accelerator_hour)
        ):
            raise ValueError(
                f"an {self.provider.upper()} site is priced from the price catalog; "
                "only pricing.egress_per_gb may be set"
            )
        return self


def check_storage_url(value: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a storage URL archipel understands."""
    if not value or any(ch in value for ch in ("\x00", "\n", "\r")):
        raise ValueError("storage URL is empty or contains control characters")
    if "://" not in value:
        if ":" in value.split("/")[0]:
            raise ValueError(f"{value!r} is not a storage URL; known schemes: {', '.join(STORAGE_SCHEMES)}")
        return  # a plain path, relative to the workspace
    parts = urlsplit(value)
    if parts.scheme not in STORAGE_SCHEMES:
        raise ValueError(
            f"unknown storage scheme {parts.scheme!r} in {value!r}; known schemes: {', '.join(STORAGE_SCHEMES)}"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"storage URL {value!r} may not carry a query or fragment; use storage_options")
    if parts.username or parts.password:
        raise ValueError("storage URL may not embed credentials; use storage_options with *_env variables")
    if parts.scheme in ("s3", "gs", "az") and not _BUCKET.match(parts.netloc or ""):
        raise ValueError(
            f"{value!r} needs a bucket or container name: {parts.scheme}://BUCKET/optional/prefix"
        )
    if parts.scheme == "file" and not (parts.netloc or parts.path):
        raise ValueError("file:// URL needs a path")
    if ".." in (parts.netloc + parts.path).split("/"):
        raise ValueError(f"storage URL {value!r} may not contain '..'")


def check_compute_uri(value: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a compute URI archipel understands."""
    if value in ("local", "local://"):
        return
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in COMPUTE_SCHEMES:
        raise ValueError(
            f"unknown compute {value!r}; use 'local' or 'ray+http://HOST:8265' (the Ray Jobs API address)"
        )
    if not _HOSTPORT.match(rest.rstrip("/")):
        raise ValueError(f"{value!r} needs HOST[:PORT] after {scheme}://")
