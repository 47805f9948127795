"""The compute interface every site backend implements, and its capability mixins.

A :class:`ComputeBackend` runs processes ("jobs") at one site. The contract, which the conformance suite in
``tests/conformance/compute.py`` checks for every backend:

- ``launch`` returns a job id matching :data:`JOB_ID` at once; the job runs detached from the caller.
- ``status``/``logs``/``cancel``/``wait`` raise :class:`NotFound` for an unknown job id, and for any string that
  is not a job id (``../x``) *before* any I/O, so an id from outside never becomes a path.
- A job ends in exactly one terminal state: SUCCEEDED (exit 0), FAILED, CANCELLED or LOST (its supervisor
  vanished without recording an exit, so the outcome can never be known).
- ``logs`` returns stdout and stderr merged, from a byte offset, with the offset to ask from next time.
- ``cancel`` stops the job and everything it started; cancelling an ended job changes nothing.
- Backend failures surface as :class:`ComputeError`; a request that does not fit as :class:`NoCapacity`.

Public methods validate and call the ``_hooks`` a backend implements (STYLE 7). Optional abilities are mixins
(:class:`WithCapacity`, :class:`WithLogTail`); :meth:`ComputeBackend.features` derives the feature set from the
class (STYLE 1). This module imports nothing beyond the standard library and :mod:`archipel.errors`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Self

from archipel.errors import ComputeError, NoCapacity, NotFound, SpecError

__all__ = [
    "JOB_ID",
    "ComputeBackend",
    "JobState",
    "JobStatus",
    "LaunchRequest",
    "Resources",
    "WithCapacity",
    "WithForget",
    "WithLogTail",
    "check_job_id",
    "locked_state",
    "new_job_id",
]

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
"""What a job id looks like; nothing else ever becomes a path or an API call.

Always ``fullmatch``: ``$`` would accept a trailing newline."""

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_ENV = frozenset({"ARCHIPEL_JOB_ID"})
_CPU_EPSILON = 1e-9  # 0.1 + 0.2 cpus must fit in 0.3
LOG_CHUNK_BYTES = 8 * 1024 * 1024


class JobState(StrEnum):
    """Where a job is in its life. Compares equal to its upper-case name (``state == "SUCCEEDED"``)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    LOST = "LOST"
    """The supervising process vanished without recording an exit; the outcome can never be known."""

    @property
    def terminal(self) -> bool:
        """True once the state can no longer change."""
        return self not in (JobState.PENDING, JobState.RUNNING)


def _format_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class Resources:
    """An amount of compute: what a job asks for, what a site has, what is in use.

    ``cpus`` may be 0 (a trivial probe that takes no capacity). Accelerators with a zero count are dropped,
    so ``Resources(accelerators={"A100": 0}) == Resources()``.
    """

    cpus: float = 1.0
    memory_bytes: int = 0
    accelerators: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (
            isinstance(self.cpus, bool)
            or not isinstance(self.cpus, int | float)
            or not math.isfinite(self.cpus)
        ):
            raise SpecError(f"cpus must be a finite number, not {self.cpus!r}")
        if self.cpus < 0:
            raise SpecError(f"cpus cannot be negative ({self.cpus})")
        if (
            isinstance(self.memory_bytes, bool)
            or not isinstance(self.memory_bytes, int)
            or self.memory_bytes < 0
        ):
            raise SpecError(f"memory_bytes must be a non-negative integer, not {self.memory_bytes!r}")
        accelerators: dict[str, int] = {}
        for name, count in dict(self.accelerators).items():
            if not isinstance(name, str) or not name or not name.isprintable():
                raise SpecError(f"accelerator name {name!r} must be a non-empty printable string")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise SpecError(
                    f"accelerator count for {name!r} must be a non-negative integer, not {count!r}"
                )
            if count:
                accelerators[name] = count
        object.__setattr__(self, "cpus", float(self.cpus))
        object.__setattr__(self, "accelerators", MappingProxyType(dict(sorted(accelerators.items()))))

    def __hash__(self) -> int:
        return hash((self.cpus, self.memory_bytes, tuple(self.accelerators.items())))

    def __add__(self, other: Resources) -> Resources:
        acc = dict(self.accelerators)
        for name, count in other.accelerators.items():
            acc[name] = acc.get(name, 0) + count
        return Resources(self.cpus + other.cpus, self.memory_bytes + other.memory_bytes, acc)

    def minus(self, other: Resources) -> Resources:
        """``self - other``, each amount clamped at zero (an over-booked site has nothing free, not less)."""
        acc = {
            name: max(0, count - other.accelerators.get(name, 0)) for name, count in self.accelerators.items()
        }
        return Resources(
            max(0.0, self.cpus - other.cpus), max(0, self.memory_bytes - other.memory_bytes), acc
        )

    def shortfall(self, available: Resources) -> list[str]:
        """What of ``self`` does not fit in ``available``, one phrase per dimension; empty when it fits."""
        short = []
        if self.cpus > available.cpus + _CPU_EPSILON:
            short.append(f"{self.cpus:g} cpus requested, {available.cpus:g} available")
        if self.memory_bytes > available.memory_bytes:
            short.append(
                f"{_format_bytes(self.memory_bytes)} memory requested, "
                f"{_format_bytes(available.memory_bytes)} available"
            )
        for name, count in self.accelerators.items():
            have = available.accelerators.get(name, 0)
            if count > have:
                short.append(f"{count} {name} requested, {have} available")
        return short

    def fits_in(self, available: Resources) -> bool:
        return not self.shortfall(available)

    def describe(self) -> str:
        """``"2 cpus, 1 GiB memory, 1 A100"``: for messages."""
        parts = [f"{self.cpus:g} cpus", f"{_format_bytes(self.memory_bytes)} memory"]
        parts += [f"{count} {name}" for name, count in self.accelerators.items()]
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "memory_bytes": self.memory_bytes, "accelerators": dict(self.accelerators)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Resources:
        return cls(data["cpus"], data["memory_bytes"], data.get("accelerators", {}))


def _check_text(what: str, value: object, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{what} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise SpecError(f"{what} contains a NUL byte: {value!r}")
    if not allow_empty and not value.strip():
        raise SpecError(f"{what} is empty")
    return value


@dataclass(frozen=True)
class LaunchRequest:
    """What to run. Validated on construction (:class:`SpecError`), immutable afterwards.

    ``command`` as a string runs through ``/bin/sh -c``; as a sequence it is executed directly (no shell).
    ``env`` is added to the environment the backend's processes inherit; ``ARCHIPEL_JOB_ID`` is reserved and
    always set by the backend. ``workdir`` is where the process starts (the backend's default when None).
    """

    command: str | Sequence[str]
    name: str = "job"
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    resources: Resources = field(default_factory=Resources)
    labels: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Variables added like ``env`` but never written anywhere by the backend (job files, logs, reprs)."""

    def __post_init__(self) -> None:
        if isinstance(self.command, str):
            _check_text("command", self.command)
        elif isinstance(self.command, Sequence) and not isinstance(self.command, bytes | bytearray):
            argv = tuple(self.command)
            if not argv:
                raise SpecError("command is an empty list; give a program and its arguments")
            for i, arg in enumerate(argv):
                _check_text(f"command[{i}]", arg, allow_empty=i > 0)
            object.__setattr__(self, "command", argv)
        else:
            raise SpecError(
                f"command must be a string or a list of strings, not {type(self.command).__name__}"
            )
        name = _check_text("job name", self.name)
        if len(name) > 128 or not name.isprintable():
            raise SpecError(f"job name {name!r} must be at most 128 printable characters")
        env = dict(self.env)
        for key, value in env.items():
            if not isinstance(key, str) or not _ENV_KEY.fullmatch(key):
                raise SpecError(f"environment variable name {key!r} is not valid (letters, digits, '_')")
            if key in _RESERVED_ENV:
                raise SpecError(f"environment variable {key} is set by archipel and cannot be overridden")
            _check_text(f"environment variable {key}", value, allow_empty=True)
        object.__setattr__(self, "env", MappingProxyType(env))
        secret_env = dict(self.secret_env)
        for key, value in secret_env.items():
            if not isinstance(key, str) or not _ENV_KEY.fullmatch(key) or key in _RESERVED_ENV:
                raise SpecError(f"secret variable name {key!r} is not valid or is reserved")
            if not isinstance(value, str) or "\x00" in value:
                raise SpecError(f"secret variable {key} must be a string without NUL bytes")
        object.__setattr__(self, "secret_env", MappingProxyType(secret_env))
        if self.workdir is not None:
            object.__setattr__(self, "workdir", _check_text("workdir", str(self.workdir)))
        if not isinstance(self.resources, Resources):
            raise SpecError(f"resources must be a Resources, not {type(self.resources).__name__}")
        labels = dict(self.labels)
        for key, value in labels.items():
            _check_text("label name", key)
            _check_text(f"label {key}", value, allow_empty=True)
        object.__setattr__(self, "labels", MappingProxyType(labels))

    @property
    def argv(self) -> list[str]:
        """The program and arguments to execute."""
        if isinstance(self.command, str):
            return ["/bin/sh", "-c", self.command]
        return list(self.command)


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of one job. ``exit_code`` is negative when a signal ended the process (-15: SIGTERM)."""

    job_id: str
    state: JobState
    exit_code: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    message: str = ""
    pid: int | None = None
    name: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "name": self.name,
            "state": str(self.state),
            "exit_code": self.exit_code,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "message": self.message,
            "pid": self.pid,
        }


@contextlib.contextmanager
def locked_state(state_dir: Path) -> Iterator[None]:
    """Hold ``state_dir``'s lock file (``flock``): one launch at a time, in any process, checks capacity and
    reserves or submits."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_job_id(job_id: object) -> str:
    """Return ``job_id`` if it is a well-formed job id; raise :class:`NotFound` (no such job can exist)."""
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise NotFound(f"no job {job_id!r}: job ids are 1-64 lower-case letters, digits and '-'")
    return job_id


def new_job_id(name: str) -> str:
    """A fresh, readable job id: the name as a slug plus 32 random bits (``train-resnet-1a2b3c4d``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-") or "job"
    return f"{slug}-{secrets.token_hex(4)}"


class ComputeBackend(ABC):
    """Runs jobs at one site. Subclasses implement the ``_hooks``; callers use the public methods."""

    scheme: ClassVar[str]
    """The compute URI scheme this backend serves (``local``, ``ray``)."""
    feature: ClassVar[str | None] = None

    @classmethod
    def features(cls) -> frozenset[str]:
        """Capabilities beyond the required core, derived from the mixins this class inherits."""
        return frozenset(f for klass in cls.__mro__ if (f := klass.__dict__.get("feature")))

    @classmethod
    @abstractmethod
    def from_address(cls, address: str | None, *, state_dir: Path, capacity: Resources) -> Self:
        """Build the backend for a parsed compute URI; each backend takes what it needs (see the registry)."""

    # -- public API ------------------------------------------------------------------------------------------

    def launch(self, req: LaunchRequest) -> str:
        """Start ``req`` detached and return its job id. Raises NoCapacity, SpecError or ComputeError."""
        if not isinstance(req, LaunchRequest):
            raise SpecError(f"launch() takes a LaunchRequest, not {type(req).__name__}")
        self._check_request(req)
        start = time.perf_counter()
        job_id = self._launch(req)
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            raise ComputeError(f"{type(self).__name__} returned a malformed job id {job_id!r}")
        log.debug("launched %s (%s) in %.1f ms", job_id, req.name, (time.perf_counter() - start) * 1000)
        return job_id

    def status(self, job_id: str) -> JobStatus:
        """The job's current status. Raises NotFound."""
        return self._status(check_job_id(job_id))

    def logs(self, job_id: str, offset: int = 0, *, max_bytes: int = LOG_CHUNK_BYTES) -> tuple[str, int]:
        """Output from byte ``offset`` (at most ``max_bytes``) and the offset to continue from.

        The returned text never ends inside a UTF-8 character; undecodable bytes become U+FFFD.
        """
        check_job_id(job_id)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise SpecError(f"log offset must be a non-negative integer, not {offset!r}")
        if max_bytes < 1:
            raise SpecError(f"max_bytes must be positive, not {max_bytes}")
        return self._logs(job_id, offset, max_bytes)

    def cancel(self, job_id: str, grace_s: float = 5.0) -> JobStatus:
        """Stop the job: SIGTERM to all its processes, SIGKILL after ``grace_s``; returns the final status.

        A job that already ended is left alone and its status returned, except that a LOST job's leftover
        processes (its supervisor is gone, they may not be) are stopped the same way.
        """
        check_job_id(job_id)
        if not math.isfinite(grace_s) or grace_s < 0:
            raise SpecError(f"grace_s must be a non-negative number of seconds, not {grace_s!r}")
        current = self._status(job_id)
        if current.state.terminal and current.state is not JobState.LOST:
            return current
        return self._cancel(job_id, grace_s)

    def wait(self, job_id: str, timeout_s: float | None = None, poll_s: float = 0.05) -> JobStatus:
        """Block until the job is terminal and return its status.

        Raises NotFound, or ComputeError if it is still running after ``timeout_s`` (the job keeps running).
        """
        check_job_id(job_id)
        if poll_s <= 0:
            raise SpecError(f"poll_s must be positive, not {poll_s!r}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = min(poll_s, 0.005)  # short jobs end within milliseconds: poll fast first, then back off
        while True:
            current = self._status(job_id)
            if current.state.terminal:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise ComputeError(
                    f"job {job_id} is still {current.state} after {timeout_s:g} s; it keeps running "
                    f"(cancel it to stop it)"
                )
            pause = delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic()))
            time.sleep(pause)
            delay = min(poll_s, delay * 2)

    def list_jobs(self) -> list[JobStatus]:
        """Every job this backend knows, oldest first."""
        return self._list_jobs()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} scheme={self.scheme!r}>"

    # -- hooks -----------------------------------------------------------------------------------------------

    def _check_request(self, req: LaunchRequest) -> None:  # noqa: B027 - optional hook, empty by default
        """Refuse a request before launching it; mixins extend this. The default accepts everything."""

    @abstractmethod
    def _launch(self, req: LaunchRequest) -> str:
        """Start the validated ``req``; return a fresh id matching :data:`JOB_ID`."""

    @abstractmethod
    def _status(self, job_id: str) -> JobStatus:
        """Status of a well-formed ``job_id``; NotFound if there is no such job."""

    @abstractmethod
    def _logs(self, job_id: str, offset: int, max_bytes: int) -> tuple[str, int]:
        """Like :meth:`logs`; arguments already validated."""

    @abstractmethod
    def _cancel(self, job_id: str, grace_s: float) -> JobStatus:
        """Stop a job that is PENDING, RUNNING or LOST; return its status once terminal."""

    @abstractmethod
    def _list_jobs(self) -> list[JobStatus]:
        """Like :meth:`list_jobs`."""


class WithCapacity(ComputeBackend):
    """The backend enforces a capacity: ``launch`` raises NoCapacity rather than overbook.

    The check and the reservation are atomic (no two launches can both take the last cpu), and a request
    larger than the whole capacity is refused as one that never fits.
    """

    feature = "capacity"

    def capacity(self) -> Resources:
        """Everything this backend may run at once."""
        return self._capacity()

    def in_use(self) -> Resources:
        """The sum of the resources of the jobs that are not terminal."""
        return self._in_use()

    def _check_request(self, req: LaunchRequest) -> None:
        super()._check_request(req)
        total = self._capacity()
        short = req.resources.shortfall(total)
        if short:
            raise NoCapacity(
                f"job {req.name!r} never fits on this backend: it asks for {req.resources.describe()} but the "
                f"whole capacity is {total.describe()} ({'; '.join(short)})"
            )

    @abstractmethod
    def _capacity(self) -> Resources: ...

    @abstractmethod
    def _in_use(self) -> Resources: ...


class WithLogTail(ComputeBackend):
    """``logs`` returns output while the job runs, so callers can follow it with offsets.

    Without this ability a backend may return nothing until the job has ended.
    """

    feature = "log_tail"


class WithForget(ComputeBackend):
    """The backend keeps ended jobs (folders, logs) until told to forget them."""

    feature = "forget"

    @abstractmethod
    def forget(self, job_id: str) -> None:
        """Delete an ended job's records and log. Raises NotFound, or Conflict if it has not ended."""
