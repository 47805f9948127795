"""Egress prices, region locations and the latency/bandwidth estimates. No exact prices are asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from archipel.errors import NotFound, SpecError
from archipel.pricing import (
    EgressMatrix,
    Location,
    PriceCatalog,
    RegionTable,
    egress_scope,
    estimate_bandwidth_gbps,
    estimate_rtt_ms,
    haversine_km,
)

# (provider, a US region, another US region, an EU region)
CLOUDS = [
    ("aws", "us-east-1", "us-west-2", "eu-central-1"),
    ("gcp", "us-central1", "us-east1", "europe-west4"),
    ("azure", "eastus", "westus2", "westeurope"),
]


@pytest.fixture(scope="module")
def catalog() -> PriceCatalog:
    return PriceCatalog.load()


# --- egress --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "home", "near", "far"), CLOUDS)
def test_egress_grows_with_distance_for_each_cloud(
    catalog: PriceCatalog, provider: str, home: str, near: str, far: str
) -> None:
    same_region = catalog.egress_price_per_gb((provider, home), (provider, home))
    same_continent = catalog.egress_price_per_gb((provider, home), (provider, near))
    cross_continent = catalog.egress_price_per_gb((provider, home), (provider, far))
    internet = catalog.egress.rate(provider, "internet").price_per_gb
    assert 0 <= same_region < same_continent <= cross_continent <= internet


def test_cross_provider_egress_is_billed_at_the_senders_internet_price(catalog: PriceCatalog) -> None:
    aws_to_gcp = catalog.egress_price_per_gb(("aws", "us-east-1"), ("gcp", "us-central1"))
    gcp_to_aws = catalog.egress_price_per_gb(("gcp", "us-central1"), ("aws", "us-east-1"))
    assert aws_to_gcp == catalog.egress.rate("aws", "internet").price_per_gb
    assert gcp_to_aws == catalog.egress.rate("gcp", "internet").price_per_gb
    assert aws_to_gcp != gcp_to_aws


@pytest.mark.parametrize("provider", ["onprem", "edge", "local"])
def test_own_sites_send_for_free(catalog: PriceCatalog, provider: str) -> None:
    assert catalog.egress_price_per_gb((provider, "frankfurt"), ("aws", "us-east-1")) == 0.0
    assert catalog.egress_price_per_gb((provider, "frankfurt"), (provider, "tokyo")) == 0.0
    # no location is needed when every inter-region price of the sender is the same
    assert catalog.egress_price_per_gb((provider, "basement"), (provider, "attic")) == 0.0
    into_site = catalog.egress_price_per_gb(("aws", "eu-central-1"), (provider, "frankfurt"))
    assert into_site == catalog.egress.rate("aws", "internet").price_per_gb


def test_every_egress_rate_has_a_source(catalog: PriceCatalog) -> None:
    for provider in catalog.egress.providers():
        for scope in (
            "same_region",
            "inter_region_same_continent",
            "inter_region_cross_continent",
            "internet",
        ):
            rate = catalog.egress.rate(provider, scope)
            assert rate.source and rate.as_of and rate.price_per_gb >= 0


def test_egress_for_unknown_providers_and_regions_is_not_found(catalog: PriceCatalog) -> None:
    with pytest.raises(NotFound, match="aws"):
        catalog.egress_price_per_gb(("ibm", "us-south"), ("aws", "us-east-1"))
    with pytest.raises(NotFound):  # gcp prices differ by continent, so the region must be known
        catalog.egress_price_per_gb(("gcp", "us-central1"), ("gcp", "moon-central1"))


def test_egress_scope_classifies_transfers() -> None:
    assert egress_scope("aws", "us-east-1", "AWS", "US-EAST-1", same_continent=False) == "same_region"
    assert (
        egress_scope("aws", "us-east-1", "aws", "us-west-2", same_continent=True)
        == "inter_region_same_continent"
    )
    assert egress_scope("aws", "us-east-1", "aws", "eu-west-1", same_continent=False) == (
        "inter_region_cross_continent"
    )
    assert egress_scope("aws", "us-east-1", "gcp", "us-east1", same_continent=True) == "internet"


def test_egress_csv_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "egress.csv"
    header = "provider,scope,price_per_gb,source,as_of\n"
    path.write_text(header + "aws,internet,0.09,list,2025-01-01\naws,anywhere,0.1,list,2025-01-01\n")
    with pytest.raises(SpecError, match=rf"{path}:3.*anywhere"):
        EgressMatrix.load(path)
    path.write_text(header + "aws,internet,free,list,2025-01-01\n")
    with pytest.raises(SpecError, match=rf"{path}:2.*price_per_gb"):
        EgressMatrix.load(path)
    path.write_text("provider,scope\naws,internet\n")
    with pytest.raises(SpecError, match=rf"{path}:1.*price_per_gb"):
        EgressMatrix.load(path)


# --- locations -----------------------------------------------------------------------------------------------


def test_an_on_prem_city_resolves_in_any_spelling(catalog: PriceCatalog) -> None:
    frankfurt = catalog.location("onprem", "frankfurt")
    assert frankfurt.continent == "EU" and frankfurt.city == "Frankfurt"
    assert catalog.location("edge", " Frankfurt ") == frankfurt
    assert catalog.location("onprem", "New York") == catalog.location("onprem", "new_york")
    assert catalog.location("onprem", "new-york").continent == "NA"


def test_an_unknown_region_is_not_found_with_the_known_ones_listed(catalog: PriceCatalog) -> None:
    with pytest.raises(NotFound) as raised:
        catalog.location("aws", "mars-north-1")
    message = str(raised.value)
    assert "mars-north-1" in message and "us-east-1" in message and "frankfurt" in message


def test_region_csv_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "regions.csv"
    path.write_text("provider,region,lat,lon,continent,city\naws,us-east-1,north,-77,NA,Ashburn\n")
    with pytest.raises(SpecError, match=rf"{path}:2"):
        RegionTable.load(path)
    path.write_text("provider,region,lat,lon,continent,city\naws,us-east-1,95,-77,NA,Ashburn\n")
    with pytest.raises(SpecError, match=rf"{path}:2"):
        RegionTable.load(path)


def test_nearest_known_region_gives_a_continent() -> None:
    table = RegionTable.load()
    _, _, near_munich = table.nearest(48.14, 11.58)
    assert near_munich.continent == "EU"


# --- latency and bandwidth -----------------------------------------------------------------------------------


def test_rtt_grows_from_same_region_to_same_continent_to_cross_continent(catalog: PriceCatalog) -> None:
    same = catalog.latency_ms(("aws", "us-east-1"), ("aws", "us-east-1"))
    continent = catalog.latency_ms(("aws", "us-east-1"), ("aws", "us-west-2"))
    cross = catalog.latency_ms(("aws", "us-east-1"), ("aws", "eu-west-1"))
    assert 1.0 <= same <= 2.0
    assert same < continent < cross


def test_rtt_is_in_the_range_public_ping_tables_show(catalog: PriceCatalog) -> None:
    assert 80 <= catalog.latency_ms(("aws", "us-east-1"), ("gcp", "europe-west4")) <= 110
    assert catalog.latency_ms(("aws", "eu-central-1"), ("onprem", "frankfurt")) <= 2.0


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("aws", "us-east-1"), ("gcp", "europe-west4")),
        (("azure", "westus2"), ("onprem", "tokyo")),
        (("gcp", "us-east1"), ("edge", "singapore")),
    ],
)
def test_latency_and_bandwidth_are_symmetric(
    catalog: PriceCatalog, a: tuple[str, str], b: tuple[str, str]
) -> None:
    assert catalog.latency_ms(a, b) == pytest.approx(catalog.latency_ms(b, a))
    assert catalog.bandwidth_gbps(a, b) == catalog.bandwidth_gbps(b, a)


def test_bandwidth_tiers(catalog: PriceCatalog) -> None:
    same_place = catalog.bandwidth_gbps(("aws", "eu-central-1"), ("gcp", "europe-west3"))  # both Frankfurt
    same_continent = catalog.bandwidth_gbps(("aws", "eu-central-1"), ("azure", "westeurope"))
    cross = catalog.bandwidth_gbps(("aws", "eu-central-1"), ("aws", "us-east-1"))
    assert same_place > same_continent > cross > 0


def test_an_explicit_location_can_stand_in_for_a_region(catalog: PriceCatalog) -> None:
    basement = Location(lat=50.0, lon=8.6, continent="EU", city="near Frankfurt")
    assert catalog.latency_ms(basement, ("aws", "eu-central-1")) < catalog.latency_ms(
        basement, ("aws", "us-east-1")
    )
    assert catalog.bandwidth_gbps(basement, ("onprem", "frankfurt")) == estimate_bandwidth_gbps(
        basement, catalog.location("onprem", "frankfurt")
    )


def test_haversine_and_rtt_on_a_known_distance() -> None:
    london = Location(51.51, -0.13, "EU", "London")
    paris = Location(48.86, 2.35, "EU", "Paris")
    assert haversine_km(london, paris) == pytest.approx(344, rel=0.05)
    assert haversine_km(london, london) == 0.0
    assert estimate_rtt_ms(london, london) == pytest.approx(1.0)
    assert estimate_rtt_ms(london, paris) > estimate_rtt_ms(london, london)


@pytest.mark.parametrize(("lat", "lon", "continent"), [(91.0, 0.0, "EU"), (0.0, 181.0, "EU"), (0.0, 0.0, "")])
def test_a_location_must_be_on_the_map(lat: float, lon: float, continent: str) -> None:
    with pytest.raises(SpecError):
        Location(lat, lon, continent)
