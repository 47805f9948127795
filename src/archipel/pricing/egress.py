"""What moving a gigabyte out of a site costs: the egress price matrix.

``data/egress.csv`` holds one public list price per provider and *scope*, for the first pricing tier
(the one a team of archipel's size pays):

======================================  ============================================================
scope                                   when it applies
======================================  ============================================================
``same_region``                         both ends in one region of one provider (cross-zone traffic)
``inter_region_same_continent``         same provider, another region on the same continent
``inter_region_cross_continent``        same provider, a region on another continent
``internet``                            the destination is another provider, on-prem, or the internet
======================================  ============================================================

Egress is billed by the sender, so the source provider's row decides the price. On-prem, edge and local
sites have no metered egress (0.0); a site may override that with its own figure.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

from archipel.errors import NotFound, SpecError
from archipel.pricing.geo import bundled_text

# typing.TYPE_CHECKING without importing typing (about 5 ms); mypy and pyright treat the name as True.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    Scope = Literal["same_region", "inter_region_same_continent", "inter_region_cross_continent", "internet"]

__all__ = ["SCOPES", "EgressMatrix", "EgressRate", "egress_scope"]

SCOPES: tuple[Scope, ...] = (
    "same_region",
    "inter_region_same_continent",
    "inter_region_cross_continent",
    "internet",
)
_SCOPE_NAMES: dict[str, Scope] = {scope: scope for scope in SCOPES}
_COLUMNS = ("provider", "scope", "price_per_gb", "source", "as_of")


@dataclass(frozen=True, slots=True)
class EgressRate:
    """USD per GB for traffic of one ``scope`` leaving ``provider``, with where the figure comes from."""

    provider: str
    scope: Scope
    price_per_gb: float
    source: str
    as_of: str


def egress_scope(
    src_provider: str, src_region: str, dst_provider: str, dst_region: str, *, same_continent: bool
) -> Scope:
    """Classify a transfer. ``same_continent`` is only consulted for two regions of one provider."""
    if src_provider.lower() != dst_provider.lower():
        return "internet"
    if src_region.lower() == dst_region.lower():
        return "same_region"
    return "inter_region_same_continent" if same_continent else "inter_region_cross_continent"


class EgressMatrix:
    """Egress rates by ``(provider, scope)``; immutable once built."""

    def __init__(self, rates: Iterable[EgressRate]) -> None:
        self._rates: dict[tuple[str, str], EgressRate] = {
            (rate.provider.lower(), rate.scope): rate for rate in rates
        }

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> EgressMatrix:
        """Read ``egress.csv`` (the bundled one when ``path`` is None).

        Raises ``SpecError`` naming the file and line for a missing column, an unknown scope or a bad price.
        """
        if path is None:
            return cls(_parse(bundled_text("egress.csv"), "archipel/pricing/data/egress.csv"))
        with open(path, encoding="utf-8-sig") as handle:
            return cls(_parse(handle.read(), os.fspath(path)))

    def providers(self) -> list[str]:
        """Providers with at least one rate, sorted."""
        return sorted({provider for provider, _ in self._rates})

    def rate(self, provider: str, scope: Scope) -> EgressRate:
        """The rate for ``provider`` and ``scope``; ``NotFound`` names the providers that have rates."""
        try:
            return self._rates[(provider.lower(), scope)]
        except KeyError:
            raise NotFound(
                f"no egress price for provider {provider!r} and scope {scope!r}; providers with prices: "
                f"{', '.join(self.providers())}"
            ) from None

    def price_per_gb(
        self, src_provider: str, src_region: str, dst_provider: str, dst_region: str, *, same_continent: bool
    ) -> float:
        """USD per GB sent from ``src`` to ``dst``, billed at the source provider's rate."""
        scope = egress_scope(
            src_provider, src_region, dst_provider, dst_region, same_continent=same_continent
        )
        return self.rate(src_provider, scope).price_per_gb


def _parse(text: str, name: str) -> list[EgressRate]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [column for column in _COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise SpecError(f"{name}:1: missing column(s) {', '.join(missing)}", location=f"{name}:1")
    rates = []
    for row in reader:
        where = f"{name}:{reader.line_num}"
        scope = _SCOPE_NAMES.get((row["scope"] or "").strip())
        if scope is None:
            raise SpecError(
                f"{where}: scope {row['scope']!r} is not one of {', '.join(SCOPES)}", location=where
            )
        try:
            price = float(row["price_per_gb"])
        except (TypeError, ValueError):
            price = math.nan
        if not (math.isfinite(price) and price >= 0):
            raise SpecError(
                f"{where}: column price_per_gb must be a number >= 0, got {row['price_per_gb']!r}",
                location=where,
            )
        provider = (row["provider"] or "").strip().lower()
        if not provider:
            raise SpecError(f"{where}: column provider must not be empty", location=where)
        rates.append(
            EgressRate(provider, scope, price, (row["source"] or "").strip(), (row["as_of"] or "").strip())
        )
    return rates
