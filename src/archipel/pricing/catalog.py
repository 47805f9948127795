"""The price catalog: instance offers with on-demand and spot prices, egress prices and region locations.

Offers come from ``data/vms.csv`` (bundled, with a ``Source`` and an ``AsOf`` on every row) and from CSVs the
user adds. Every CSV uses SkyPilot's catalog columns, so a SkyPilot catalog file can be dropped in as is::

    InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone

optionally followed by archipel's ``Provider``, ``Source`` and ``AsOf``. Required are ``InstanceType``,
``vCPUs``, ``MemoryGiB``, ``Price`` and ``Region``; the others may be absent (Azure's SkyPilot catalog, for
one, has no ``AvailabilityZone``). Rows with an empty ``InstanceType`` are skipped: in SkyPilot's GCP catalog
they price accelerators that are attached to a VM, not machines one can rent.

Later sources win per ``(provider, region, instance_type)``: when a user CSV has any row for such a triple,
every bundled row for it (regional or per zone) is replaced, so a zonal catalog supersedes a regional one.
Within one file a repeated ``(provider, region, instance_type, zone)`` keeps its last row.

Loading reads a few small files with the standard library and keeps no module-level cache; build the
catalog once and pass it around.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from archipel.errors import SpecError
from archipel.pricing.egress import EgressMatrix, egress_scope
from archipel.pricing.geo import Location, RegionTable, bundled_text, estimate_bandwidth_gbps, estimate_rtt_ms

__all__ = [
    "ARCHIPEL_COLUMNS",
    "REQUIRED_COLUMNS",
    "SKYPILOT_COLUMNS",
    "InstanceOffer",
    "PriceCatalog",
    "amortized_offer",
    "read_offers",
]

SKYPILOT_COLUMNS: tuple[str, ...] = (
    "InstanceType",
    "AcceleratorName",
    "AcceleratorCount",
    "vCPUs",
    "MemoryGiB",
    "GpuInfo",
    "Price",
    "SpotPrice",
    "Region",
    "AvailabilityZone",
)
ARCHIPEL_COLUMNS: tuple[str, ...] = ("Provider", "Source", "AsOf")
REQUIRED_COLUMNS: tuple[str, ...] = ("InstanceType", "vCPUs", "MemoryGiB", "Price", "Region")
_SKYPILOT_FILE_STEMS = {"vms", "instances", "catalog"}

Place = tuple[str, str] | Location
"""A ``(provider, region)`` pair, or an explicit location."""
CsvPath = str | os.PathLike[str]
CsvSource = CsvPath | tuple[CsvPath, str]
"""A CSV path, or ``(path, provider)`` for a plain SkyPilot catalog."""


@dataclass(frozen=True, slots=True)
class InstanceOffer:
    """One machine one can rent (or, on-prem, use) in one region, with its hourly prices in USD."""

    provider: str
    region: str
    instance_type: str
    vcpus: float
    memory_gib: float
    accelerator: str | None
    accelerator_count: int
    price: float | None
    """On-demand USD/hour; None when the offer is not sold on demand."""
    spot_price: float | None
    """Spot/preemptible USD/hour; None when there is no spot market for it."""
    zone: str | None
    source: str
    as_of: str

    def __post_init__(self) -> None:
        if self.vcpus < 0 or self.memory_gib < 0 or self.accelerator_count < 0:
            raise SpecError(f"offer {self.instance_type!r}: vcpus, memory and accelerator count must be >= 0")
        for value in (self.price, self.spot_price):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise SpecError(
                    f"offer {self.instance_type!r}: prices must be finite and >= 0, got {value!r}"
                )

    @property
    def key(self) -> tuple[str, str, str, str | None]:
        """``(provider, region, instance_type, zone)``: what identifies an offer in the catalog."""
        return (self.provider, self.region, self.instance_type, self.zone)

    def hourly(self, spot: bool) -> float | None:
        """The spot price if ``spot`` else the on-demand price; None when that market does not exist."""
        return self.spot_price if spot else self.price


def read_offers(source: CsvSource) -> list[InstanceOffer]:
    """Read offers from one CSV: ``path`` or ``(path, provider)``.

    Without a ``Provider`` column the provider is the given one, else the file name's first token
    (``aws.csv``, ``gcp_vms.csv`` -> ``aws``, ``gcp``), or the parent directory's name for SkyPilot's own
    layout (``catalogs/v7/azure/vms.csv`` -> ``azure``). ``Source`` defaults to the path and ``AsOf`` to the
    file's modification date (UTC). Raises ``SpecError`` naming the file, line and column of a bad value.
    """
    path, provider = (
        (os.fspath(source[0]), source[1]) if isinstance(source, tuple) else (os.fspath(source), None)
    )
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
        mtime = os.stat(path).st_mtime
    except OSError as err:
        raise SpecError(f"{path}: cannot read price catalog CSV: {err.strerror or err}") from None
    if provider is None:
        provider = _provider_from_path(path)
    as_of = datetime.fromtimestamp(mtime, tz=UTC).date().isoformat()
    return _parse_offers(text, path, provider.strip().lower(), path, as_of)


class PriceCatalog:
    """Offers, egress prices and region locations; immutable, safe to share between threads."""

    def __init__(self, offers: Iterable[InstanceOffer], egress: EgressMatrix, regions: RegionTable) -> None:
        self._offers = {offer.key: offer for offer in _merge([list(offers)])}
        self._egress = egress
        self._regions = regions

    @classmethod
    def load(cls, extra_csvs: Sequence[CsvSource] = ()) -> PriceCatalog:
        """The bundled catalog, then each of ``extra_csvs`` in order (see the module docstring for overrides)."""
        layers = [_parse_offers(bundled_text("vms.csv"), "archipel/pricing/data/vms.csv", None, "", "")]
        layers.extend(read_offers(extra) for extra in extra_csvs)
        return cls(_merge(layers), EgressMatrix.load(), RegionTable.load())

    def with_offers(self, offers: Iterable[InstanceOffer]) -> PriceCatalog:
        """A new catalog where ``offers`` (e.g. amortized on-prem ones) replace rows of the same triple."""
        return PriceCatalog(_merge([list(self._offers.values()), list(offers)]), self._egress, self._regions)

    @property
    def egress(self) -> EgressMatrix:
        return self._egress

    @property
    def regions(self) -> RegionTable:
        return self._regions

    def __len__(self) -> int:
        return len(self._offers)

    def offers(
        self,
        provider: str | None = None,
        region: str | None = None,
        instance_types: Collection[str] | None = None,
    ) -> list[InstanceOffer]:
        """Offers filtered by provider, region (case-insensitive) and instance types, in a stable order."""
        provider = provider.lower() if provider else None
        region = region.lower() if region else None
        found = [
            offer
            for offer in self._offers.values()
            if (provider is None or offer.provider == provider)
            and (region is None or offer.region.lower() == region)
            and (instance_types is None or offer.instance_type in instance_types)
        ]
        return sorted(found, key=_offer_order)

    def match(
        self,
        *,
        cpus: float = 0,
        memory_gib: float = 0,
        accelerator: str | None = None,
        accelerator_count: int = 0,
        spot: bool = False,
        provider: str | None = None,
        region: str | None = None,
    ) -> list[InstanceOffer]:
        """Offers with at least ``cpus`` and ``memory_gib``, cheapest first by ``hourly(spot)``.

        With ``accelerator`` only offers of that accelerator (case-insensitive, exact name: ``A100`` does not
        match ``A100-80GB``) with at least ``max(accelerator_count, 1)`` of them qualify; without it, any
        offer does (a CPU request may land on a GPU box if that is cheapest), and ``accelerator_count > 0``
        asks for that many accelerators of any kind. Offers without a price for the market are dropped.
        """
        if cpus < 0 or memory_gib < 0 or accelerator_count < 0:
            raise SpecError("cpus, memory_gib and accelerator_count must be >= 0")
        wanted = accelerator.casefold() if accelerator else None
        count = max(accelerator_count, 1) if wanted else accelerator_count
        chosen: list[tuple[float, InstanceOffer]] = []
        for offer in self.offers(provider, region):
            if offer.vcpus < cpus or offer.memory_gib < memory_gib or offer.accelerator_count < count:
                continue
            if wanted and (offer.accelerator is None or offer.accelerator.casefold() != wanted):
                continue
            price = offer.hourly(spot)
            if price is not None:
                chosen.append((price, offer))
        chosen.sort(key=lambda item: (item[0], *_offer_order(item[1])))
        return [offer for _, offer in chosen]

    def egress_price_per_gb(self, src: tuple[str, str], dst: tuple[str, str]) -> float:
        """USD per GB sent from ``src`` to ``dst`` (``(provider, region)`` pairs), at the sender's rate.

        Same provider and region: ``same_region``; same provider, other region: the inter-region rate for the
        same or another continent (continents from the region table, looked up only when they matter);
        another provider: the source provider's ``internet`` rate. On-prem, edge and local sources are 0.0.
        """
        (src_provider, src_region), (dst_provider, dst_region) = src, dst
        scope = egress_scope(src_provider, src_region, dst_provider, dst_region, same_continent=True)
        if scope != "inter_region_same_continent":
            return self._egress.rate(src_provider, scope).price_per_gb
        same = self._egress.rate(src_provider, "inter_region_same_continent").price_per_gb
        cross = self._egress.rate(src_provider, "inter_region_cross_continent").price_per_gb
        if same == cross:
            return same
        same_continent = self.location(*src).continent == self.location(*dst).continent
        return same if same_continent else cross

    def latency_ms(self, src: Place, dst: Place) -> float:
        """Estimated round-trip time between two places (see ``archipel.pricing.geo``); symmetric."""
        return estimate_rtt_ms(self._resolve(src), self._resolve(dst))

    def bandwidth_gbps(self, src: Place, dst: Place) -> float:
        """Estimated bulk-transfer bandwidth between two places in Gbit/s (an estimate, see geo)."""
        return estimate_bandwidth_gbps(self._resolve(src), self._resolve(dst))

    def location(self, provider: str, region: str) -> Location:
        """Where ``region`` of ``provider`` is; ``NotFound`` lists the known regions."""
        return self._regions.lookup(provider, region)

    def _resolve(self, place: Place) -> Location:
        return place if isinstance(place, Location) else self.location(*place)


def amortized_offer(
    *,
    provider: str,
    region: str,
    cpus: float,
    memory_gib: float,
    cpu_hour: float,
    memory_gib_hour: float = 0.0,
    accelerator: str | None = None,
    accelerator_count: int = 0,
    accelerator_hour: float = 0.0,
    source: str = "site config",
    as_of: str | None = None,
) -> InstanceOffer:
    """An offer for hardware one owns, priced by amortized cost; it has no spot market.

    ``price = cpus * cpu_hour + memory_gib * memory_gib_hour + accelerator_count * accelerator_hour``; the
    instance type reads like ``onprem-4cpu-16gib`` (``-2xa100`` appended for accelerators). ``as_of``
    defaults to today.
    """
    if cpus <= 0 or memory_gib < 0:
        raise SpecError(f"an amortized offer needs cpus > 0 and memory_gib >= 0, got {cpus}, {memory_gib}")
    if min(cpu_hour, memory_gib_hour, accelerator_hour) < 0:
        raise SpecError("amortized prices (cpu_hour, memory_gib_hour, accelerator_hour) must be >= 0")
    if (accelerator is None) != (accelerator_count == 0) or accelerator_count < 0:
        raise SpecError("give an accelerator name together with a positive accelerator_count, or neither")
    instance_type = f"{provider}-{cpus:g}cpu-{memory_gib:g}gib"
    if accelerator:
        instance_type += f"-{accelerator_count}x{accelerator.lower()}"
    price = cpus * cpu_hour + memory_gib * memory_gib_hour + accelerator_count * accelerator_hour
    return InstanceOffer(
        provider=provider.lower(),
        region=region,
        instance_type=instance_type,
        vcpus=float(cpus),
        memory_gib=float(memory_gib),
        accelerator=accelerator,
        accelerator_count=accelerator_count,
        price=price,
        spot_price=None,
        zone=None,
        source=source,
        as_of=as_of or date.today().isoformat(),
    )


def _offer_order(offer: InstanceOffer) -> tuple[str, str, str, str]:
    return (offer.provider, offer.region, offer.instance_type, offer.zone or "")


def _merge(layers: Sequence[Sequence[InstanceOffer]]) -> list[InstanceOffer]:
    """Later layers replace every earlier offer of the same (provider, region, instance_type)."""
    merged: dict[tuple[str, str, str], dict[str | None, InstanceOffer]] = {}
    for layer in layers:
        mine: dict[tuple[str, str, str], dict[str | None, InstanceOffer]] = {}
        for offer in layer:
            mine.setdefault((offer.provider, offer.region, offer.instance_type), {})[offer.zone] = offer
        merged.update(mine)
    return [offer for by_zone in merged.values() for offer in by_zone.values()]


def _provider_from_path(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0].lower()
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    if stem in _SKYPILOT_FILE_STEMS and parent:
        return parent.lower()
    for separator in "-.":
        stem = stem.replace(separator, "_")
    return stem.split("_", 1)[0]


def _parse_offers(
    text: str, name: str, provider: str | None, default_source: str, default_as_of: str
) -> list[InstanceOffer]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise SpecError(
            f"{name}:1: missing column(s) {', '.join(missing)}; a price catalog CSV needs "
            f"{', '.join(REQUIRED_COLUMNS)} (SkyPilot's catalog columns)",
            location=f"{name}:1",
        )
    offers = []
    for row in reader:
        where = f"{name}:{reader.line_num}"
        instance_type = _text(row, "InstanceType")
        if not instance_type:
            continue
        row_provider = (_text(row, "Provider") or provider or "").lower()
        region = _text(row, "Region")
        if not row_provider or not region:
            raise SpecError(
                f"{where}: every row needs a Region and a provider (Provider column)", location=where
            )
        accelerator = _text(row, "AcceleratorName") or None
        count = _number(row, "AcceleratorCount", where)
        if accelerator and count is None:
            raise SpecError(
                f"{where}: column AcceleratorCount is required when AcceleratorName is set", location=where
            )
        if count is not None and count != int(count):
            raise SpecError(
                f"{where}: column AcceleratorCount must be a whole number, got {count!r}", location=where
            )
        offers.append(
            InstanceOffer(
                provider=row_provider,
                region=region,
                instance_type=instance_type,
                vcpus=_required(row, "vCPUs", where),
                memory_gib=_required(row, "MemoryGiB", where),
                accelerator=accelerator,
                accelerator_count=int(count or 0) if accelerator else 0,
                price=_number(row, "Price", where),
                spot_price=_number(row, "SpotPrice", where),
                zone=_text(row, "AvailabilityZone") or None,
                source=_text(row, "Source") or default_source,
                as_of=_text(row, "AsOf") or default_as_of,
            )
        )
    return offers


def _text(row: dict[str, str | None], column: str) -> str:
    return (row.get(column) or "").strip()


def _number(row: dict[str, str | None], column: str, where: str) -> float | None:
    """The column as a finite number >= 0, None when empty; ``SpecError`` (file:line, column) otherwise."""
    raw = _text(row, column)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise SpecError(f"{where}: column {column}: expected a number >= 0, got {raw!r}", location=where)
    return value


def _required(row: dict[str, str | None], column: str, where: str) -> float:
    value = _number(row, column, where)
    if value is None:
        raise SpecError(f"{where}: column {column} must not be empty", location=where)
    return value
