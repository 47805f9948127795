"""The compute interface's value types and rules, without running anything."""

from __future__ import annotations

from pathlib import Path
from typing import Self

import pytest

from archipel.backends.compute.base import (
    ComputeBackend,
    JobState,
    JobStatus,
    LaunchRequest,
    Resources,
    WithCapacity,
    WithLogTail,
    check_job_id,
    new_job_id,
)
from archipel.errors import NotFound, SpecError


def test_job_states() -> None:
    assert [s for s in JobState if s.terminal] == ["SUCCEEDED", "FAILED", "CANCELLED", "LOST"]
    assert JobState("RUNNING") is JobState.RUNNING and JobState.RUNNING == "RUNNING"
    assert f"{JobState.LOST}" == "LOST"


def test_resources_arithmetic_and_messages() -> None:
    a = Resources(cpus=1.5, memory_bytes=2**30, accelerators={"A100": 1})
    b = Resources(cpus=0.5, memory_bytes=2**30, accelerators={"A100": 1, "T4": 2})
    total = a + b
    assert total == Resources(cpus=2, memory_bytes=2**31, accelerators={"A100": 2, "T4": 2})
    assert total.minus(a) == Resources(cpus=0.5, memory_bytes=2**30, accelerators={"A100": 1, "T4": 2})
    assert a.minus(total) == Resources(cpus=0)  # clamped, never negative
    assert a.fits_in(total) and not total.fits_in(a)
    assert total.shortfall(a) == [
        "2 cpus requested, 1.5 available",
        "2 GiB memory requested, 1 GiB available",
        "2 A100 requested, 1 available",
        "2 T4 requested, 0 available",
    ]
    assert a.describe() == "1.5 cpus, 1 GiB memory, 1 A100"
    assert Resources(cpus=0.1) + Resources(cpus=0.2) == Resources(cpus=0.1 + 0.2)
    assert Resources(cpus=0.1 + 0.2).fits_in(Resources(cpus=0.3))
    assert Resources(accelerators={"A100": 0}) == Resources()
    assert Resources.from_json(total.to_json()) == total
    assert len({a, Resources(cpus=1.5, memory_bytes=2**30, accelerators={"A100": 1}), b}) == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cpus": -1},
        {"cpus": float("nan")},
        {"cpus": float("inf")},
        {"cpus": "2"},
        {"cpus": True},
        {"memory_bytes": -1},
        {"memory_bytes": 1.5},
        {"accelerators": {"A100": -1}},
        {"accelerators": {"": 1}},
        {"accelerators": {"A100": 1.0}},
    ],
)
def test_resources_refuse_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(SpecError):
        Resources(**kwargs)  # type: ignore[arg-type]


def test_launch_request_is_validated_and_immutable() -> None:
    env = {"A": "1"}
    req = LaunchRequest(command=["python", "-c", ""], env=env, labels={"team": "ml"})
    env["B"] = "2"
    assert dict(req.env) == {"A": "1"}  # a copy
    with pytest.raises(TypeError):
        req.env["C"] = "3"  # type: ignore[index]
    assert req.command == ("python", "-c", "") and req.argv == ["python", "-c", ""]
    assert LaunchRequest(command="echo $HOME").argv == ["/bin/sh", "-c", "echo $HOME"]
    assert LaunchRequest(command="true", workdir=Path("/tmp")).workdir == "/tmp"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"command": ""},
        {"command": "   "},
        {"command": []},
        {"command": [""]},
        {"command": "echo \x00"},
        {"command": ["echo", "a\x00b"]},
        {"command": b"echo"},
        {"command": 42},
        {"command": ["echo", 1]},
        {"command": "true", "name": ""},
        {"command": "true", "name": "a\nb"},
        {"command": "true", "name": "x" * 129},
        {"command": "true", "env": {"1BAD": "x"}},
        {"command": "true", "env": {"A-B": "x"}},
        {"command": "true", "env": {"A\n": "x"}},
        {"command": "true", "env": {"A": "x\x00"}},
        {"command": "true", "env": {"A": 1}},
        {"command": "true", "env": {"ARCHIPEL_JOB_ID": "mine"}},
        {"command": "true", "workdir": ""},
        {"command": "true", "resources": {"cpus": 1}},
        {"command": "true", "labels": {"": "x"}},
    ],
)
def test_launch_request_refuses_bad_input(kwargs: dict[str, object]) -> None:
    with pytest.raises(SpecError):
        LaunchRequest(**kwargs)  # type: ignore[arg-type]


def test_job_ids() -> None:
    assert check_job_id("train-1a2b") == "train-1a2b"
    for bad in ("../x", "/etc", "", "A", "-a", "a\n", "x" * 65, None, 7):
        with pytest.raises(NotFound):
            check_job_id(bad)
    job = new_job_id("Train ResNet-50 (EU)")
    assert job.startswith("train-resnet-50-eu-") and check_job_id(job) == job
    assert new_job_id("!!!").startswith("job-")
    assert len(new_job_id("x" * 500)) <= 64
    assert new_job_id("a") != new_job_id("a")


class _Minimal(ComputeBackend):
    scheme = "minimal"

    @classmethod
    def from_address(cls, address: str | None, *, state_dir: Path, capacity: Resources) -> Self:
        return cls()

    def _launch(self, req: LaunchRequest) -> str:
        return "Not A Valid Id"

    def _status(self, job_id: str) -> JobStatus:
        raise NotFound(job_id)

    def _logs(self, job_id: str, offset: int, max_bytes: int) -> tuple[str, int]:
        return "", offset

    def _cancel(self, job_id: str, grace_s: float) -> JobStatus:
        raise NotFound(job_id)

    def _list_jobs(self) -> list[JobStatus]:
        return []


def test_features_come_from_the_mixins() -> None:
    class Both(WithCapacity, WithLogTail, _Minimal):
        def _capacity(self) -> Resources:
            return Resources()

        def _in_use(self) -> Resources:
            return Resources(cpus=0)

    assert _Minimal.features() == frozenset()
    assert Both.features() == {"capacity", "log_tail"}


def test_hooks_are_enforced() -> None:
    class Incomplete(ComputeBackend):
        scheme = "incomplete"

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


def test_public_methods_validate_before_the_hooks() -> None:
    from archipel.errors import ComputeError

    backend = _Minimal()
    with pytest.raises(ComputeError, match="malformed job id"):
        backend.launch(LaunchRequest(command="true"))
    with pytest.raises(SpecError):
        backend.launch("echo hi")  # type: ignore[arg-type]
    for call, args in (
        (backend.logs, ("job-1", -1)),
        (backend.cancel, ("job-1", -1.0)),
        (backend.wait, ("job-1", 1, 0)),
    ):
        with pytest.raises(SpecError):
            call(*args)  # type: ignore[operator]
