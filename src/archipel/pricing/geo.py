"""Where regions are, and rough network latency and bandwidth between them.

Coordinates come from ``data/regions.csv``: one row per cloud region that the bundled price catalog
uses (the data-centre campus or the metro the provider names), plus rows under provider ``*`` keyed by
city (``frankfurt``, ``new-york``) so that an on-prem site with ``region: frankfurt`` resolves.

The latency and bandwidth figures are *estimates* for planning, not measurements:

* round-trip time: great-circle distance x 1.5 (fibre rarely runs straight) at 200 km/ms (light in
  glass), there and back, plus a 1 ms floor for switching and the last metres. Same region comes out at
  about 1 ms, us-east-1 to europe-west4 at about 95 ms, close to what public ping tables show.
* bandwidth for one bulk transfer: 10 Gbit/s within one place (< 50 km), 2 Gbit/s within a continent,
  0.5 Gbit/s across continents. Real throughput depends on instance size, parallel streams and the path.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from archipel.errors import NotFound, SpecError

__all__ = [
    "EARTH_RADIUS_KM",
    "Location",
    "RegionTable",
    "bundled_text",
    "estimate_bandwidth_gbps",
    "estimate_rtt_ms",
    "haversine_km",
    "normalize_region",
]

EARTH_RADIUS_KM = 6371.0
FIBRE_ROUTE_FACTOR = 1.5
"""Fibre paths are about 1.5x the great-circle distance."""
FIBRE_KM_PER_MS = 200.0
"""Light in glass covers about 200 km per millisecond."""
RTT_FLOOR_MS = 1.0
SAME_PLACE_KM = 50.0
SAME_PLACE_GBPS = 10.0
SAME_CONTINENT_GBPS = 2.0
CROSS_CONTINENT_GBPS = 0.5

ANY_PROVIDER = "*"
_COLUMNS = ("provider", "region", "lat", "lon", "continent", "city")


@dataclass(frozen=True, slots=True)
class Location:
    """A point on the map with the continent (``NA``, ``EU``, ``AS``...) it belongs to."""

    lat: float
    lon: float
    continent: str
    city: str = ""

    def __post_init__(self) -> None:
        if not (-90.0 <= self.lat <= 90.0 and -180.0 <= self.lon <= 180.0):
            raise SpecError(f"location ({self.lat}, {self.lon}) is not a latitude/longitude pair")
        if not self.continent:
            raise SpecError("a location needs a continent code (e.g. EU, NA)")


def haversine_km(a: Location, b: Location) -> float:
    """Great-circle distance between two locations, in kilometres."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlat = lat2 - lat1
    dlon = math.radians(b.lon - a.lon)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def estimate_rtt_ms(a: Location, b: Location) -> float:
    """Estimated round-trip time in milliseconds (see the module docstring); symmetric, >= 1 ms."""
    one_way_ms = haversine_km(a, b) * FIBRE_ROUTE_FACTOR / FIBRE_KM_PER_MS
    return 2 * one_way_ms + RTT_FLOOR_MS


def estimate_bandwidth_gbps(a: Location, b: Location) -> float:
    """Estimated bulk-transfer bandwidth in Gbit/s: 10 same place, 2 same continent, 0.5 otherwise."""
    if haversine_km(a, b) < SAME_PLACE_KM:
        return SAME_PLACE_GBPS
    if a.continent == b.continent:
        return SAME_CONTINENT_GBPS
    return CROSS_CONTINENT_GBPS


def normalize_region(name: str) -> str:
    """Lower-case, trimmed, spaces and underscores as hyphens: ``"New York"`` -> ``"new-york"``."""
    return "-".join(name.strip().lower().replace("_", " ").split())


class RegionTable:
    """Locations by ``(provider, region)``, with ``*`` rows as a by-name fallback for any provider.

    Lookups are case-insensitive; ``*`` rows also match the region written with spaces or underscores
    (``New York``, ``new_york``). The table is immutable once built.
    """

    def __init__(self, entries: Iterable[tuple[str, str, Location]]) -> None:
        table: dict[tuple[str, str], Location] = {}
        for provider, region, location in entries:
            table[(provider.strip().lower(), normalize_region(region))] = location
        self._table = table

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> RegionTable:
        """Read ``regions.csv`` (the bundled one when ``path`` is None).

        Raises ``SpecError`` naming the file and line for a missing column or a bad number.
        """
        if path is None:
            return cls(_parse_regions(bundled_text("regions.csv"), "archipel/pricing/data/regions.csv"))
        with open(path, encoding="utf-8-sig") as handle:
            return cls(_parse_regions(handle.read(), os.fspath(path)))

    def __iter__(self) -> Iterator[tuple[str, str, Location]]:
        for (provider, region), location in sorted(self._table.items()):
            yield provider, region, location

    def __len__(self) -> int:
        return len(self._table)

    def get(self, provider: str, region: str) -> Location | None:
        """The location of ``region`` of ``provider``, else of a ``*`` row of that name, else None."""
        key = normalize_region(region)
        return self._table.get((provider.strip().lower(), key)) or self._table.get((ANY_PROVIDER, key))

    def lookup(self, provider: str, region: str) -> Location:
        """Like ``get`` but raises ``NotFound`` listing the regions known for ``provider`` and ``*``."""
        location = self.get(provider, region)
        if location is None:
            raise NotFound(
                f"no location known for region {region!r} of provider {provider!r}; known regions: "
                f"{self._describe_known(provider)}. Give the site an explicit location (lat, lon, continent)"
            )
        return location

    def regions(self, provider: str) -> list[str]:
        """Region names known for ``provider`` (not counting ``*`` rows), sorted."""
        wanted = provider.strip().lower()
        return sorted(region for (p, region) in self._table if p == wanted)

    def nearest(self, lat: float, lon: float) -> tuple[str, str, Location]:
        """The known ``(provider, region, location)`` closest to a point, e.g. to guess its continent."""
        if not self._table:
            raise NotFound("the region table is empty")
        probe = Location(lat, lon, "?")
        return min(self, key=lambda entry: haversine_km(probe, entry[2]))

    def _describe_known(self, provider: str) -> str:
        own = self.regions(provider)
        anywhere = self.regions(ANY_PROVIDER)
        parts = []
        if own:
            parts.append(f"{provider}: {', '.join(own)}")
        parts.append(f"any provider (*): {', '.join(anywhere) or 'none'}")
        return "; ".join(parts)


def bundled_text(name: str) -> str:
    """The text of ``archipel/pricing/data/<name>``, read through importlib.resources (works from a zip)."""
    # Imported here, not at module top: importlib.resources pulls in zipfile and tempfile, which would
    # triple the import time of this package for callers that never load data.
    from importlib.resources import files

    return (files("archipel.pricing") / "data" / name).read_text(encoding="utf-8")


def _parse_regions(text: str, name: str) -> list[tuple[str, str, Location]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [column for column in _COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise SpecError(f"{name}:1: missing column(s) {', '.join(missing)}", location=f"{name}:1")
    entries = []
    for row in reader:
        where = f"{name}:{reader.line_num}"
        try:
            lat, lon = float(row["lat"]), float(row["lon"])
        except (TypeError, ValueError):
            raise SpecError(
                f"{where}: lat/lon must be numbers, got {row['lat']!r}, {row['lon']!r}", location=where
            ) from None
        if not row["provider"] or not row["region"]:
            raise SpecError(f"{where}: provider and region must not be empty", location=where)
        try:
            location = Location(
                lat, lon, (row["continent"] or "").strip().upper(), (row["city"] or "").strip()
            )
        except SpecError as err:
            raise SpecError(f"{where}: {err}", location=where) from None
        entries.append((row["provider"], row["region"], location))
    return entries
