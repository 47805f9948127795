"""Bad archipel.yaml inputs give a one-paragraph error naming the file and line; good ones load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from archipel.errors import SpecError
from archipel.models.workspace import WorkspaceSpec
from archipel.spec.validate import load_model_file
from archipel.spec.yaml_loader import load_yaml

GOOD = """\
version: 1
name: team
sites:
  aws-us-east-1:
    provider: aws
    region: us-east-1
    jurisdiction: US
    storage: s3://team-bucket/archipel
    storage_options: {endpoint_url: "http://127.0.0.1:9000", key_env: AWS_ACCESS_KEY_ID}
    compute: ray+http://127.0.0.1:8265
    capacity: {cpus: 16, memory: 64GiB, accelerators: {A10G: 2}}
  onprem-frankfurt:
    provider: onprem
    region: frankfurt
    jurisdiction: EU
    storage: file://sites/fra
    pricing: {cpu_hour: 0.02}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "archipel.yaml"
    path.write_text(text)
    return path


def test_good_spec_loads_with_units_parsed(tmp_path: Path) -> None:
    spec = load_model_file(_write(tmp_path, GOOD), WorkspaceSpec)
    site = spec.sites["aws-us-east-1"]
    assert site.capacity.memory == 64 * 2**30
    assert site.capacity.accelerators == {"A10G": 2}
    assert spec.sites["onprem-frankfurt"].compute == "local"


BAD = {
    "typo": (
        GOOD.replace("    compute: ray+http", "    comptue: ray+http"),
        10,
        ["unknown key 'comptue'", "did you mean 'compute'", "allowed keys:", "storage_options"],
    ),
    "duplicate_site": (
        GOOD + "  aws-us-east-1:\n    provider: aws\n",
        18,
        ["duplicate key 'aws-us-east-1'", "first defined on line 4"],
    ),
    "unknown_provider": (
        GOOD.replace("provider: onprem", "provider: hetzner"),
        13,
        ["'hetzner'", "'aws'", "'onprem'"],
    ),
    "bad_uri": (
        GOOD.replace("s3://team-bucket/archipel", "ftp://team-bucket/x"),
        8,
        ["unknown storage scheme 'ftp'"],
    ),
    "python_tag": (
        GOOD.replace("region: frankfurt", "region: !!python/object/apply:os.system ['true']"),
        14,
        ["python/object", "not allowed"],
    ),
    "inline_secret": (
        GOOD.replace("key_env: AWS_ACCESS_KEY_ID", "secret_key: hunter2"),
        9,
        ["looks like a secret", "_env"],
    ),
    "bad_jurisdiction": (
        GOOD.replace("jurisdiction: US", "jurisdiction: usa"),
        7,
        ["not a jurisdiction code"],
    ),
    "bad_memory": (GOOD.replace("memory: 64GiB", "memory: 64 parsecs"), 11, ["unknown size unit"]),
    "onprem_without_pricing": (GOOD.replace("    pricing: {cpu_hour: 0.02}\n", ""), 12, ["needs 'pricing'"]),
    "bad_site_name": (GOOD.replace("aws-us-east-1:", "AWS_East:"), 4, ["site name 'AWS_East'"]),
    "yaml_syntax": (GOOD.replace("capacity: {cpus: 16,", "capacity: {cpus: 16,,"), 11, ["invalid YAML"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_spec_names_file_line_and_problem(tmp_path: Path, case: str) -> None:
    text, line, fragments = BAD[case]
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_model_file(path, WorkspaceSpec, display="archipel.yaml")
    message = str(info.value)
    assert f"archipel.yaml:{line}:" in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("case", ["typo", "duplicate_site", "unknown_provider", "bad_uri", "python_tag"])
def test_cli_reports_bad_spec_without_traceback(tmp_path: Path, case: str) -> None:
    text, line, fragments = BAD[case]
    _write(tmp_path, text)
    proc = subprocess.run(
        [sys.executable, "-m", "archipel.cli", "-w", str(tmp_path), "sites", "ls"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"archipel.yaml:{line}:" in proc.stderr
    assert fragments[0] in proc.stderr
    assert proc.stdout == ""


def test_python_tag_is_never_constructed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(SpecError):
        load_yaml(f"x: !!python/object/apply:os.system ['touch {marker}']\n", "f.yaml")
    assert not marker.exists()


def test_merge_keys_and_non_string_keys_refused() -> None:
    with pytest.raises(SpecError, match="merge keys"):
        load_yaml("a: &x {b: 1}\nc:\n  <<: *x\n", "f.yaml")
    with pytest.raises(SpecError, match="plain strings"):
        load_yaml("? [1, 2]\n: x\n", "f.yaml")


def test_positions_track_nested_values() -> None:
    data, positions = load_yaml("a:\n  b:\n    - x\n    - y: 2\n", "f.yaml")
    assert data == {"a": {"b": ["x", {"y": 2}]}}
    assert positions.line_of(("a", "b", 1, "y")) == 4
    assert positions.line_of(("a", "b", 0)) == 3
    assert positions.where(("a", "missing"), key=True) == "f.yaml:1"


def test_metadata_store_password_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "metadata_store: postgresql://u:secret@db/x\n")
    with pytest.raises(SpecError) as info:
        load_model_file(path, WorkspaceSpec)
    assert "ARCHIPEL_DB_URL" in str(info.value)
    assert "secret" not in str(info.value).replace("ARCHIPEL", "")


def test_schema_is_generated_from_models() -> None:
    from archipel.spec.schema import workspace_schema

    schema = workspace_schema()
    assert schema["additionalProperties"] is False
    site = schema["$defs"]["SiteSpec"]
    assert set(site["required"]) >= {"provider", "region", "jurisdiction", "storage"}
    assert site["properties"]["provider"]["enum"] == ["aws", "gcp", "azure", "onprem", "edge", "local"]
    assert "description" in site["properties"]["storage"]


def test_memory_defaults_are_sizes_not_gib_counts() -> None:
    from archipel.models.job import Resources
    from archipel.models.site import Capacity

    assert Capacity().memory == 16 * 2**30
    assert Resources().memory == 4 * 2**30


def test_specs_round_trip_through_json() -> None:
    from archipel.cli.demo_plan import DEMO_PIPELINE
    from archipel.models.job import PipelineSpec
    from archipel.services.init import DEMO_SPEC
    from archipel.spec.yaml_loader import load_yaml

    assert PipelineSpec.model_validate(DEMO_PIPELINE.model_dump(mode="json")) == DEMO_PIPELINE
    data, _ = load_yaml(DEMO_SPEC, "demo")
    spec = WorkspaceSpec.model_validate(data)
    assert WorkspaceSpec.model_validate(spec.model_dump(mode="json")) == spec
