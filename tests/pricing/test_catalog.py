"""The price catalog: bundled data, matching, user CSVs and amortized offers. No exact prices are asserted."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from importlib.resources import files
from pathlib import Path

import pytest

from archipel.errors import NotFound, SpecError
from archipel.pricing import SKYPILOT_COLUMNS, InstanceOffer, PriceCatalog, amortized_offer, read_offers

SKYPILOT_HEADER = ",".join(SKYPILOT_COLUMNS)


@pytest.fixture(scope="module")
def catalog() -> PriceCatalog:
    return PriceCatalog.load()


def write_csv(path: Path, *rows: str, header: str = SKYPILOT_HEADER) -> Path:
    path.write_text("\n".join((header, *rows)) + "\n", encoding="utf-8")
    return path


def mtime_date(path: Path) -> str:
    return datetime.fromtimestamp(os.stat(path).st_mtime, tz=UTC).date().isoformat()


# --- bundled data --------------------------------------------------------------------------------------------


def test_bundled_catalog_loads_with_a_source_and_date_on_every_row(catalog: PriceCatalog) -> None:
    offers = catalog.offers()
    assert 60 <= len(offers) <= 120
    assert {offer.provider for offer in offers} == {"aws", "gcp", "azure"}
    for offer in offers:
        assert offer.source.strip(), offer
        date.fromisoformat(offer.as_of)


def test_bundled_catalog_covers_the_promised_regions(catalog: PriceCatalog) -> None:
    regions = {(offer.provider, offer.region) for offer in catalog.offers()}
    assert regions == {
        ("aws", "us-east-1"), ("aws", "us-west-2"), ("aws", "eu-west-1"), ("aws", "eu-central-1"),
        ("gcp", "us-central1"), ("gcp", "us-east1"), ("gcp", "europe-west4"), ("gcp", "europe-west3"),
        ("azure", "eastus"), ("azure", "westus2"), ("azure", "westeurope"), ("azure", "germanywestcentral"),
    }  # fmt: skip


def test_every_bundled_region_has_a_location(catalog: PriceCatalog) -> None:
    for offer in catalog.offers():
        location = catalog.location(offer.provider, offer.region)
        assert location.continent in {"NA", "EU"}


def test_spot_is_never_above_on_demand(catalog: PriceCatalog) -> None:
    both = [offer for offer in catalog.offers() if offer.price is not None and offer.spot_price is not None]
    assert both
    for offer in both:
        assert offer.spot_price <= offer.price, offer


def test_vms_csv_starts_with_skypilots_columns_in_order() -> None:
    text = (files("archipel.pricing") / "data" / "vms.csv").read_text(encoding="utf-8")
    header = next(csv.reader(io.StringIO(text)))
    assert tuple(header[:10]) == tuple(SKYPILOT_HEADER.split(","))
    assert tuple(header[:10]) == SKYPILOT_COLUMNS
    assert header[10:] == ["Provider", "Source", "AsOf"]


def test_europe_costs_more_than_us_east_for_the_same_machine(catalog: PriceCatalog) -> None:
    (us,) = catalog.offers("aws", "us-east-1", {"m6i.large"})
    (eu,) = catalog.offers("aws", "eu-central-1", {"m6i.large"})
    assert us.price is not None and eu.price is not None and eu.price > us.price


# --- offers and match ----------------------------------------------------------------------------------------


def test_offers_filter_by_provider_region_and_type(catalog: PriceCatalog) -> None:
    gcp = catalog.offers(provider="GCP")
    assert gcp and all(offer.provider == "gcp" for offer in gcp)
    frankfurt = catalog.offers(region="eu-central-1")
    assert frankfurt and all(offer.region == "eu-central-1" for offer in frankfurt)
    picked = catalog.offers(instance_types={"m6i.large", "n2-standard-4"})
    assert {offer.instance_type for offer in picked} == {"m6i.large", "n2-standard-4"}
    assert catalog.offers(provider="aws", region="nowhere-1") == []


def test_match_cpu_and_memory_is_sorted_cheapest_first_and_satisfies(catalog: PriceCatalog) -> None:
    found = catalog.match(cpus=4, memory_gib=16)
    assert found
    prices = [offer.hourly(spot=False) for offer in found]
    assert all(price is not None for price in prices)
    assert prices == sorted(prices)  # type: ignore[type-var]
    assert all(offer.vcpus >= 4 and offer.memory_gib >= 16 for offer in found)
    assert any(offer.vcpus == 2 for offer in catalog.offers())  # smaller machines exist and were left out


def test_match_accelerator_is_case_insensitive_and_exact(catalog: PriceCatalog) -> None:
    found = catalog.match(accelerator="a100")
    assert found
    assert {offer.accelerator for offer in found} == {"A100"}
    assert {offer.provider for offer in found} >= {"aws", "gcp"}
    eight = catalog.match(accelerator="A100", accelerator_count=8)
    assert eight and all(offer.accelerator_count >= 8 for offer in eight)
    assert catalog.match(accelerator="A100-80GB")[0].provider == "azure"


def test_match_any_accelerator_by_count_and_cpu_requests_may_use_gpu_boxes(catalog: PriceCatalog) -> None:
    some_gpu = catalog.match(accelerator_count=1)
    assert some_gpu and all(offer.accelerator and offer.accelerator_count >= 1 for offer in some_gpu)
    big_memory = catalog.match(cpus=90, memory_gib=1000)
    assert big_memory and all(offer.accelerator for offer in big_memory)  # only GPU boxes are that big


def test_match_spot_drops_offers_without_a_spot_price(catalog: PriceCatalog) -> None:
    no_spot = amortized_offer(provider="onprem", region="frankfurt", cpus=64, memory_gib=256, cpu_hour=0.001)
    with_site = catalog.with_offers([no_spot])
    on_demand = with_site.match(cpus=64, memory_gib=256)
    spot = with_site.match(cpus=64, memory_gib=256, spot=True)
    assert no_spot in on_demand and on_demand[0] == no_spot  # the cheapest on demand
    assert no_spot not in spot
    assert spot and all(offer.spot_price is not None for offer in spot)
    spot_prices = [offer.spot_price for offer in spot]
    assert spot_prices == sorted(spot_prices)  # type: ignore[type-var]


def test_match_narrows_to_provider_and_region(catalog: PriceCatalog) -> None:
    found = catalog.match(cpus=2, provider="azure", region="westeurope")
    assert found and {(offer.provider, offer.region) for offer in found} == {("azure", "westeurope")}


def test_match_rejects_negative_requests(catalog: PriceCatalog) -> None:
    with pytest.raises(SpecError):
        catalog.match(cpus=-1)


# --- user CSVs -----------------------------------------------------------------------------------------------


def test_plain_skypilot_csv_overrides_a_bundled_row(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "aws.csv",
        "m6i.large,,,2.0,8.0,,0.0111,0.0055,us-east-1,",
        "x9.huge,,,4.0,16.0,,0.5,,us-east-1,",
    )
    bundled = PriceCatalog.load()
    catalog = PriceCatalog.load([path])
    (offer,) = catalog.offers("aws", "us-east-1", {"m6i.large"})
    assert (offer.price, offer.spot_price, offer.zone) == (0.0111, 0.0055, None)
    assert offer.source == str(path)
    assert offer.as_of == mtime_date(path)
    (added,) = catalog.offers("aws", "us-east-1", {"x9.huge"})
    assert added.spot_price is None and added.accelerator is None
    assert len(catalog) == len(bundled) + 1
    assert catalog.offers("aws", "eu-west-1", {"m6i.large"}) == bundled.offers(
        "aws", "eu-west-1", {"m6i.large"}
    )


def test_provider_comes_from_the_tuple_form_or_the_file_name(tmp_path: Path) -> None:
    row = "tiny-1,,,1.0,2.0,,0.01,0.005,europe-west4,europe-west4-a"
    (named,) = read_offers(write_csv(tmp_path / "gcp_vms.csv", row))
    (given,) = read_offers((write_csv(tmp_path / "prices.csv", row), "GCP"))
    layout = tmp_path / "catalogs" / "v7" / "azure"
    layout.mkdir(parents=True)
    (skypilot_layout,) = read_offers(write_csv(layout / "vms.csv", row))
    assert (named.provider, given.provider, skypilot_layout.provider) == ("gcp", "gcp", "azure")
    assert named.zone == "europe-west4-a"


def test_zonal_user_rows_replace_the_regional_bundled_row(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "aws.csv",
        "m6i.large,,,2.0,8.0,,0.096,0.03,us-east-1,use1-az1",
        "m6i.large,,,2.0,8.0,,0.096,0.04,us-east-1,use1-az2",
    )
    offers = PriceCatalog.load([path]).offers("aws", "us-east-1", {"m6i.large"})
    assert [offer.zone for offer in offers] == ["use1-az1", "use1-az2"]


def test_skypilot_gpu_rows_without_an_instance_type_are_skipped(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "gcp.csv",
        ",,,A100,1,,us-central1,us-central1-a,2.9,1.1",
        "n2-standard-2,2.0,8.0,,,,us-central1,us-central1-a,0.097,0.028",
        header="InstanceType,vCPUs,MemoryGiB,AcceleratorName,AcceleratorCount,GpuInfo,Region,AvailabilityZone,"
        "Price,SpotPrice",  # GCP's own column order: columns are found by name
    )
    (offer,) = read_offers(path)
    assert (offer.instance_type, offer.vcpus, offer.price) == ("n2-standard-2", 2.0, 0.097)


def test_a_missing_column_is_a_spec_error_naming_file_and_line(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "aws.csv", "m6i.large,,,8.0,,0.1,,us-east-1,", header=SKYPILOT_HEADER.replace("vCPUs,", "")
    )
    with pytest.raises(SpecError) as raised:
        PriceCatalog.load([path])
    assert f"{path}:1" in str(raised.value) and "vCPUs" in str(raised.value)


def test_a_bad_number_is_a_spec_error_naming_file_line_and_column(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "aws.csv",
        "m6i.large,,,2.0,8.0,,0.096,0.03,us-east-1,",
        "m6i.xlarge,,,4.0,16.0,,cheap,0.05,us-east-1,",
    )
    with pytest.raises(SpecError) as raised:
        PriceCatalog.load([path])
    message = str(raised.value)
    assert f"{path}:3" in message and "Price" in message and "cheap" in message
    assert raised.value.location == f"{path}:3"


@pytest.mark.parametrize(
    "row",
    [
        "m6i.large,,,2.0,8.0,,-0.5,,us-east-1,",  # negative price
        "m6i.large,,,,8.0,,0.1,,us-east-1,",  # empty vCPUs
        "p3.2xlarge,V100,1.5,8.0,61.0,,3.06,,us-east-1,",  # fractional GPU count
        "p3.2xlarge,V100,,8.0,61.0,,3.06,,us-east-1,",  # accelerator without a count
        "m6i.large,,,2.0,8.0,,0.1,,,",  # no region
    ],
)
def test_invalid_rows_are_spec_errors_with_their_line(tmp_path: Path, row: str) -> None:
    path = write_csv(tmp_path / "aws.csv", row)
    with pytest.raises(SpecError, match=rf"{path}:2"):
        read_offers(path)


def test_an_unreadable_csv_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"missing\.csv"):
        read_offers(tmp_path / "missing.csv")


# --- amortized offers ----------------------------------------------------------------------------------------


def test_amortized_offer_prices_owned_hardware() -> None:
    offer = amortized_offer(
        provider="onprem",
        region="frankfurt",
        cpus=32,
        memory_gib=128,
        cpu_hour=0.01,
        memory_gib_hour=0.001,
        accelerator="A100",
        accelerator_count=2,
        accelerator_hour=1.0,
    )
    assert offer.instance_type == "onprem-32cpu-128gib-2xa100"
    assert offer.price == pytest.approx(32 * 0.01 + 128 * 0.001 + 2 * 1.0)
    assert offer.spot_price is None and offer.hourly(spot=True) is None
    assert offer.source == "site config" and date.fromisoformat(offer.as_of)
    assert amortized_offer(
        provider="edge", region="x", cpus=4, memory_gib=16, cpu_hour=0.0
    ).instance_type == ("edge-4cpu-16gib")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cpus": 0},
        {"cpu_hour": -1.0},
        {"accelerator": "A100"},
        {"accelerator_count": 2},
    ],
)
def test_amortized_offer_rejects_impossible_input(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "provider": "onprem",
        "region": "paris",
        "cpus": 4,
        "memory_gib": 8,
        "cpu_hour": 0.01,
    }
    with pytest.raises(SpecError):
        amortized_offer(**{**base, **kwargs})  # type: ignore[arg-type]


def test_an_offer_with_a_negative_price_is_refused() -> None:
    with pytest.raises(SpecError):
        InstanceOffer("aws", "us-east-1", "x", 1, 1, None, 0, -1.0, None, None, "test", "2025-01-01")


def test_location_of_an_unknown_region_is_not_found(catalog: PriceCatalog) -> None:
    with pytest.raises(NotFound):
        catalog.location("gcp", "moon-central1")


def test_importing_the_catalog_stays_light() -> None:
    code = (
        "import sys; before = set(sys.modules); import archipel.pricing; "
        "new = set(sys.modules) - before; "
        "print(sorted(m for m in ('pydantic', 'pandas', 'numpy', 'sqlalchemy', 'typing') if m in new))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
