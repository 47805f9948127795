"""The price catalog: instance offers and their prices, egress prices, region locations and network estimates.

Standard library only, so it imports in milliseconds; the data ships as CSVs in ``archipel/pricing/data``.
"""

from __future__ import annotations

from archipel.pricing.catalog import (
    ARCHIPEL_COLUMNS,
    SKYPILOT_COLUMNS,
    InstanceOffer,
    PriceCatalog,
    amortized_offer,
    read_offers,
)
from archipel.pricing.egress import SCOPES, EgressMatrix, EgressRate, egress_scope
from archipel.pricing.geo import (
    Location,
    RegionTable,
    estimate_bandwidth_gbps,
    estimate_rtt_ms,
    haversine_km,
    normalize_region,
)

__all__ = [
    "ARCHIPEL_COLUMNS",
    "SCOPES",
    "SKYPILOT_COLUMNS",
    "EgressMatrix",
    "EgressRate",
    "InstanceOffer",
    "Location",
    "PriceCatalog",
    "RegionTable",
    "amortized_offer",
    "egress_scope",
    "estimate_bandwidth_gbps",
    "estimate_rtt_ms",
    "haversine_km",
    "normalize_region",
    "read_offers",
]
