"""A site whose storage is S3 (moto's server on loopback) is checked like any other, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import S3Endpoint

pytestmark = pytest.mark.s3


def _workspace(root: Path, s3: S3Endpoint, bucket: str, *, endpoint: str | None = None) -> Path:
    root.mkdir()
    (root / "archipel.yaml").write_text(
        f"""\
version: 1
name: s3-test
sites:
  aws-eu-west-1:
    provider: aws
    region: eu-west-1
    jurisdiction: EU
    storage: s3://{bucket}/sites/aws-eu-west-1
    storage_options:
      endpoint_url: {endpoint or s3.url}
      key_env: {s3.key_env}
      secret_env: {s3.secret_env}
    capacity: {{cpus: 2, memory: 4GiB}}
"""
    )
    return root


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archipel.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_sites_check_writes_reads_and_cleans_up_on_s3(
    tmp_path: Path, s3: S3Endpoint, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(s3.secret_env, "s3cr3t-never-printed")
    ws = _workspace(tmp_path / "ws", s3, s3_bucket)
    applied = _cli("-w", str(ws), "apply", "--yes")
    assert applied.returncode == 0, applied.stderr
    proc = _cli("-w", str(ws), "sites", "check", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads(proc.stdout)
    assert result["health"] == "healthy", result
    assert result["storage"]["ok"] and result["compute"]["ok"]
    assert s3.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0  # the probe was removed
    assert "s3cr3t" not in proc.stdout + proc.stderr  # credentials are never printed


def test_an_unreachable_bucket_makes_the_site_degraded_not_a_crash(
    tmp_path: Path, s3: S3Endpoint, s3_bucket: str
) -> None:
    ws = _workspace(tmp_path / "ws", s3, s3_bucket, endpoint="http://127.0.0.1:9")
    assert _cli("-w", str(ws), "apply", "--yes").returncode == 0
    # botocore's own retries against a dead endpoint cost seconds; one attempt shows the same outcome
    proc = _cli("-w", str(ws), "sites", "check", "--json", "--timeout", "20", AWS_MAX_ATTEMPTS="1")
    assert proc.returncode == 9, proc.stdout + proc.stderr  # SiteUnavailable's exit code
    (result,) = json.loads(proc.stdout)
    assert result["health"] == "degraded"
    assert not result["storage"]["ok"] and "127.0.0.1:9" in result["storage"]["detail"]
    assert "Traceback" not in proc.stderr
