"""Compute URIs, lazy plugin loading and install hints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from archipel.backends.compute import registry
from archipel.backends.compute.base import Resources
from archipel.backends.compute.local import LocalCompute
from archipel.backends.compute.ray import RayJobsCompute
from archipel.backends.compute.registry import BackendEntry, backend_class, open_compute, parse_compute_uri
from archipel.errors import MissingDependency, SpecError
from archipel.models.site import check_compute_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("local", ("local", None)),
        ("local://", ("local", None)),
        ("ray+http://127.0.0.1:8265", ("ray", "http://127.0.0.1:8265")),
        ("ray+http://head.cluster.internal:8265/", ("ray", "http://head.cluster.internal:8265")),
        ("ray+https://ray.example.com", ("ray", "https://ray.example.com")),
        ("ray+http://[::1]:8265", ("ray", "http://[::1]:8265")),
    ],
)
def test_parse_accepted_uris(uri: str, expected: tuple[str, str | None]) -> None:
    assert parse_compute_uri(uri) == expected
    check_compute_uri(uri)  # the site model accepts what the registry accepts


@pytest.mark.parametrize(
    "uri",
    [
        "k8s://x",
        "garbage",
        "",
        "ray://h:8265",
        "ray+http://",
        "ray+http://h:99999",
        "ray+http://h:port",
        "ray+http://user:pw@h:8265",
        "ray+http://h:8265/api",
        "ray+http://h:8265?x=1",
        "local:// ",
        "LOCAL",
    ],
)
def test_parse_refuses_others_naming_the_accepted_forms(uri: str) -> None:
    with pytest.raises(SpecError, match=r"'local', 'ray\+http://HOST:PORT'"):
        parse_compute_uri(uri)


def test_open_local(tmp_path: Path) -> None:
    backend = open_compute(
        "local", state_dir=tmp_path / "c", cpus=2, memory_bytes=2**30, accelerators={"T4": 1}
    )
    assert isinstance(backend, LocalCompute)
    assert backend.capacity() == Resources(cpus=2, memory_bytes=2**30, accelerators={"T4": 1})
    assert not (tmp_path / "c").exists()  # nothing is created until a job is launched


def test_open_ray_needs_no_sdk_and_no_cluster(tmp_path: Path) -> None:
    backend = open_compute(
        "ray+http://127.0.0.1:8265/", state_dir=tmp_path / "c", cpus=2, memory_bytes=2**30, accelerators={}
    )
    assert isinstance(backend, RayJobsCompute)
    assert backend.address == "http://127.0.0.1:8265"
    assert backend.capacity() == Resources(cpus=2, memory_bytes=2**30)
    assert {"capacity", "log_tail", "forget"} <= type(backend).features()
    assert not (tmp_path / "c").exists()  # nothing is created (and nothing is asked) until a job is launched
    assert backend.list_jobs() == []
    with pytest.raises(SpecError, match=r"ray\+http://HOST:8265"):
        RayJobsCompute.from_address(None, state_dir=tmp_path, capacity=Resources())


def test_missing_sdk_names_the_module_and_the_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        registry.BACKENDS, "fake", BackendEntry("archipel_no_such_sdk.backend:Fake", "pip install x")
    )
    with pytest.raises(MissingDependency, match=r"'archipel_no_such_sdk'.*pip install x"):
        backend_class("fake")
    with pytest.raises(SpecError, match="known: "):
        backend_class("nope")


def test_a_pending_backend_says_why_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        registry.BACKENDS,
        "planned",
        BackendEntry("archipel.backends.compute.planned:Planned", "pip install y", pending="not shipped yet"),
    )
    with pytest.raises(
        MissingDependency, match=r"unavailable: not shipped yet; install it with: pip install y"
    ):
        backend_class("planned")


def test_imports_stay_light() -> None:
    code = (
        "import sys, json\n"
        "import archipel.backends.compute\n"
        "light = sorted(m for m in ('pydantic', 'sqlalchemy', 'yaml', 'ray', 'archipel.backends.compute.local',"
        " 'archipel.backends.compute.ray')"
        " if m in sys.modules)\n"
        "from archipel.cli.main import main\n"
        "print(json.dumps(light))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []
    help_code = (
        "import sys\nfrom archipel.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('COMPUTE', any(m.startswith('archipel.backends.compute') for m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", help_code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "COMPUTE False" in out.stdout
