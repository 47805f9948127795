"""Jurisdiction codes and containment: a site in DE is within EU; one in US-CA is within US."""

from __future__ import annotations

__all__ = ["EU_MEMBERS", "within"]

EU_MEMBERS = frozenset(
    {"AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE"}
    | {"IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"}
)
"""The 27 member states (ISO 3166-1 alpha-2); data law made for the EU binds each of them."""


def _parents(code: str) -> list[str]:
    """``code`` and every jurisdiction that contains it, innermost first."""
    chain = [code]
    country = code.split("-", 1)[0]
    if country != code:
        chain.append(country)  # US-CA within US
    if country in EU_MEMBERS:
        chain.append("EU")
    return chain


def within(place: str, area: str) -> bool:
    """Whether jurisdiction ``place`` lies inside ``area`` (equal, a subdivision, or an EU member in EU).

    Containment is only proven upward: a site in ``EU`` is not known to be in ``DE``, so it is not within it.
    """
    return area in _parents(place)
