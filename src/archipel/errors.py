"""One error tree for archipel, split by audience.

::

    ArchipelError                     anything archipel raises on purpose
    ├── UserError                     the caller can fix it (bad input, missing thing, refused action)
    │   ├── SpecError                 a spec/YAML/CLI argument is invalid (names file, line, allowed keys)
    │   ├── NotFound                  a named thing does not exist
    │   ├── Conflict                  the thing exists already / changed under us / lease held
    │   ├── PolicyViolation           a policy refuses the action (carries rule + reason)
    │   ├── Unauthorized              no or bad credentials
    │   ├── Forbidden                 credentials lack the scope
    │   └── TooLarge                  a request's body is beyond what the server takes
    └── BackendError                  a site, store or engine failed; often transient
        ├── StorageError              a storage backend failed
        │   └── IntegrityError        bytes do not match their sha256
        ├── ComputeError              a compute backend failed to launch/track a process
        ├── NoCapacity                the site cannot fit the request now
        ├── TransferFailed            a copy between sites failed
        ├── SiteUnavailable           a site does not answer
        └── MissingDependency         an optional extra is not installed (carries the install hint)

Callers ``except NotFound``; nobody compares message strings. The HTTP status and the CLI exit code of
each class live in one table each (``HTTP_STATUS``, ``EXIT_CODE``); lookups walk the MRO so subclasses
inherit their parent's mapping.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CODE",
    "HTTP_STATUS",
    "ArchipelError",
    "BackendError",
    "ComputeError",
    "Conflict",
    "Forbidden",
    "IntegrityError",
    "MissingDependency",
    "NoCapacity",
    "NotFound",
    "PolicyViolation",
    "SiteUnavailable",
    "SpecError",
    "StorageError",
    "TooLarge",
    "TransferFailed",
    "Unauthorized",
    "UserError",
    "exit_code_for",
    "http_status_for",
]


class ArchipelError(Exception):
    """Base of every error archipel raises on purpose. ``str(err)`` is a complete, user-facing sentence."""


class UserError(ArchipelError):
    """The caller can fix this: bad input, a missing thing, a refused action."""


class SpecError(UserError):
    """A spec, YAML file or argument is invalid.

    ``location`` is ``file:line`` when known; the message already includes it.
    """

    def __init__(self, message: str, *, location: str | None = None) -> None:
        super().__init__(message)
        self.location = location


class NotFound(UserError):
    """A named thing (site, dataset, run, blob, job...) does not exist."""


class Conflict(UserError):
    """The thing exists already, changed concurrently, or a lease is held elsewhere."""


class PolicyViolation(UserError):
    """A policy refuses the action. ``rule`` names the rule, ``reason`` says why."""

    def __init__(self, message: str, *, rule: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.rule = rule
        self.reason = reason


class Unauthorized(UserError):
    """No credentials, or credentials that are not valid."""


class Forbidden(UserError):
    """Valid credentials whose scope does not allow the action."""


class TooLarge(UserError):
    """A request's body (an uploaded file or folder) is larger than the server takes."""


class BackendError(ArchipelError):
    """A site, store or engine failed; often transient and worth a retry elsewhere."""


class StorageError(BackendError):
    """A storage backend failed to read, write, list or delete."""


class IntegrityError(StorageError):
    """Bytes do not match their recorded sha256 (corruption or tampering)."""


class ComputeError(BackendError):
    """A compute backend failed to launch or track a process."""


class NoCapacity(BackendError):
    """The site cannot fit the request now (cpus, memory or accelerators)."""


class TransferFailed(BackendError):
    """A copy between two sites failed."""


class SiteUnavailable(BackendError):
    """A site does not answer."""


class MissingDependency(BackendError):
    """An optional dependency is not installed; the message carries the install command."""


# One table each: the most specific class found in an error's MRO wins.
HTTP_STATUS: dict[type[ArchipelError], int] = {
    ArchipelError: 400,
    UserError: 400,
    SpecError: 400,
    NotFound: 404,
    Conflict: 409,
    PolicyViolation: 409,
    Unauthorized: 401,
    Forbidden: 403,
    TooLarge: 413,
    BackendError: 503,
    NoCapacity: 409,
}
"""What the REST API answers (``archipel.api.app``): a refusal or no room for the work is a 409 the caller can act on;
a site or backend that failed, 503."""

EXIT_CODE: dict[type[ArchipelError], int] = {
    ArchipelError: 1,
    UserError: 2,
    SpecError: 2,
    NotFound: 3,
    Conflict: 4,
    PolicyViolation: 5,
    Unauthorized: 6,
    Forbidden: 6,
    BackendError: 7,
    NoCapacity: 8,
    SiteUnavailable: 9,
    MissingDependency: 10,
}


def _lookup(table: dict[type[ArchipelError], int], err: BaseException, default: int) -> int:
    for klass in type(err).__mro__:
        if klass in table:
            return table[klass]  # type: ignore[index]
    return default


def http_status_for(err: BaseException) -> int:
    """HTTP status for ``err``; 500 for anything that is not an ``ArchipelError``."""
    return _lookup(HTTP_STATUS, err, 500)


def exit_code_for(err: BaseException) -> int:
    """CLI exit code for ``err``; 1 for anything that is not an ``ArchipelError``."""
    return _lookup(EXIT_CODE, err, 1)
