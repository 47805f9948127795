"""``archipel offers``: the cheapest offers across the workspace's sites that fit a request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from archipel.models.site import CLOUD_PROVIDERS
from archipel.pricing.catalog import InstanceOffer, amortized_offer
from archipel.workspace import Workspace

__all__ = ["OfferRequest", "SiteOffer", "find_offers", "fits_capacity"]


@dataclass(frozen=True)
class OfferRequest:
    cpus: float = 1
    memory_gib: float = 0
    accelerator: str | None = None
    accelerator_count: int = 0
    spot: bool = False
    sites: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()


@dataclass(frozen=True)
class SiteOffer:
    site: str
    jurisdiction: str
    offer: InstanceOffer
    spot: bool
    hourly: float

    def as_json(self) -> dict[str, Any]:
        o = self.offer
        return {
            "site": self.site,
            "provider": o.provider,
            "region": o.region,
            "jurisdiction": self.jurisdiction,
            "instance_type": o.instance_type,
            "vcpus": o.vcpus,
            "memory_gib": o.memory_gib,
            "accelerator": o.accelerator,
            "accelerator_count": o.accelerator_count,
            "spot": self.spot,
            "hourly_usd": self.hourly,
            "source": o.source,
            "as_of": o.as_of,
        }


def fits_capacity(workspace: Workspace, site_name: str, req: OfferRequest) -> bool:
    cap = workspace.site(site_name).capacity
    if req.cpus > cap.cpus or req.memory_gib * 2**30 > cap.memory:
        return False
    if req.accelerator:
        have = {k.lower(): v for k, v in cap.accelerators.items()}
        return have.get(req.accelerator.lower(), 0) >= max(1, req.accelerator_count)
    return True


def find_offers(workspace: Workspace, req: OfferRequest) -> list[SiteOffer]:
    """Every enabled site's offers that satisfy ``req`` and fit its capacity, cheapest first."""
    out: list[SiteOffer] = []
    catalog = workspace.catalog
    for name, site in workspace.spec.sites.items():
        if not site.enabled or (req.sites and name not in req.sites):
            continue
        if req.providers and site.provider not in req.providers:
            continue
        if not fits_capacity(workspace, name, req):
            continue
        if site.provider in CLOUD_PROVIDERS:
            matches = catalog.match(
                cpus=req.cpus,
                memory_gib=req.memory_gib,
                accelerator=req.accelerator,
                accelerator_count=req.accelerator_count,
                spot=req.spot,
                provider=site.provider,
                region=site.region,
            )
            allowed = set(site.offers) if site.offers is not None else None
            for offer in matches:
                if allowed is not None and offer.instance_type not in allowed:
                    continue
                hourly = offer.hourly(req.spot)
                if hourly is not None:
                    out.append(SiteOffer(name, site.jurisdiction, offer, req.spot, hourly))
        elif not req.spot:  # owned hardware has no spot market
            pricing = site.pricing
            acc_price = 0.0
            if req.accelerator and pricing:
                acc_price = {k.lower(): v for k, v in pricing.accelerator_hour.items()}.get(
                    req.accelerator.lower(), 0.0
                )
            offer = amortized_offer(
                provider=site.provider,
                region=site.region,
                cpus=req.cpus,
                memory_gib=req.memory_gib,
                cpu_hour=pricing.cpu_hour if pricing else 0.0,
                memory_gib_hour=pricing.memory_gib_hour if pricing else 0.0,
                accelerator=req.accelerator,
                accelerator_count=req.accelerator_count if req.accelerator else 0,
                accelerator_hour=acc_price,
                source=f"{workspace.file.name}: sites.{name}.pricing (amortized)",
            )
            out.append(SiteOffer(name, site.jurisdiction, offer, False, offer.price or 0.0))
    out.sort(key=lambda so: (so.hourly, so.site, so.offer.instance_type))
    return out
