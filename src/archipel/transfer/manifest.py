"""The resume state of one transfer: a manifest file written atomically, and a lock held while it runs.

``state_dir/<transfer id>.json`` records the multipart upload a transfer writes into, the chunk size it uses,
the sealed header of an encrypted destination, and every acknowledged part with the sha256 of the plaintext
chunk it carries (unless the destination hashes the whole object itself and did not report it, see
:class:`PartRecord`). It is rewritten atomically (temp file, rename; the folder is fsynced when the manifest
is created) as parts are acknowledged: a worker returns only once a write that includes its part is done, and
one write covers every part acknowledged while the previous one was in flight (:meth:`Manifest.commit`). A
process killed at any instant leaves either the previous manifest or the next one, and a new call resumes
from it. Writes that record a sealing intent are durable (the file fsynced before the rename, the folder
after it), so no power cut forgets one; writes that only record acknowledged parts are not (a power cut may
bring back an earlier manifest: the parts it lacks are sent again, and every part it records is cross-checked
against the backend's ``list_parts`` before it is trusted). Everything read back from a manifest is
validated as untrusted input: a manifest that does not parse or does not describe this very transfer is
discarded (and its upload aborted by the caller).

``state_dir/<transfer id>.lock`` is held with ``flock`` while a transfer runs, so two processes never drive
the same upload; the kernel drops the lock when its holder dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from archipel.errors import Conflict

__all__ = ["Manifest", "PartRecord", "state_lock", "transfer_id"]

logger = logging.getLogger(__name__)
_HEX64 = re.compile(r"[0-9a-f]{64}")


def transfer_id(
    src_url: str, src_key: str, dst_url: str, dst_key: str, sha256: str, src_key_id: str, dst_key_id: str
) -> str:
    """A stable id for a transfer: the sha256 of what it moves, from where, to where, sealed how."""
    fields = [src_url, src_key, dst_url, dst_key, sha256, src_key_id, dst_key_id]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


@dataclass(frozen=True)
class PartRecord:
    """An acknowledged part: what the backend said (``size``, ``etag``, ``part_sha256``) and what it carries.

    ``plain_sha256`` is None only for a plaintext part of a destination that hashes the whole object itself
    before publishing it and did not report a per-part sha256 (a local folder written in place): nothing
    re-reads such a chunk against it, so it is not computed."""

    number: int
    size: int
    etag: str
    part_sha256: str | None
    plain_sha256: str | None


@dataclass
class Manifest:
    """The resume state of one transfer. Mutated by the engine under ``lock``; :meth:`save` persists it."""

    path: Path
    transfer_id: str
    sha256: str
    size: int
    chunk_size: int
    upload_id: str
    header: bytes | None = None
    parts: dict[int, PartRecord] = field(default_factory=dict)
    intents: dict[int, str] = field(default_factory=dict)
    """Chunk index -> sha256 of the plaintext about to be sealed with that chunk's nonce (sealed destinations)."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _write_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _changes: int = field(default=0, init=False, repr=False, compare=False)  # changes made under ``lock``
    _written: int = field(default=0, init=False, repr=False, compare=False)  # changes in the file
    _durable: int = field(default=0, init=False, repr=False, compare=False)  # changes in the file, fsynced
    _folder_synced: bool = field(default=False, init=False, repr=False, compare=False)

    def plain_sha256(self, index: int) -> str | None:
        """The plaintext sha256 recorded for chunk ``index`` by an earlier attempt, if any."""
        record = self.parts.get(index + 1)
        return record.plain_sha256 if record else self.intents.get(index)

    def commit(self, change: Callable[[], None], *, durable: bool = True) -> None:
        """Apply ``change`` (under ``lock``), then return once a manifest write that includes it is done --
        fsynced if ``durable``.

        Group commit: parallel workers each record their part, and one write covers every change made before
        it began, so a worker whose change an ongoing write missed waits for the next one, and a worker whose
        change a later write already covered does not write at all. ``durable=False`` suits a change that a
        power cut may undo because the caller cross-checks it on resume (an acknowledged part: ``list_parts``
        says whether the backend holds it); a change that must survive one (a sealing intent) is durable."""
        with self.lock:
            change()
            self._changes += 1
            mine = self._changes
        with self._write_lock:
            if (self._durable if durable else self._written) >= mine:
                return
            with self.lock:  # a snapshot: workers keep recording while it is written
                covered, body = self._changes, self._body()
            self.save(durable=durable, body=body)
            self._written = covered
            if durable:
                self._durable = covered

    def save(self, *, durable: bool = True, body: dict[str, Any] | None = None) -> None:
        """Write the manifest atomically (temp file, rename), and durably (fsync of the file before the rename
        and of the folder after it) unless told otherwise. The caller holds ``lock`` (or is the only thread).

        A process killed at any instant leaves the previous manifest or the next one. After a write that is
        not durable, a power cut may bring back an earlier manifest, which records fewer parts: those are sent
        again. The folder is also fsynced the first time this process writes the manifest (it may be new).
        ``body`` is a snapshot taken under ``lock`` (see :meth:`commit`); without it the caller holds ``lock``."""
        if body is None:
            body = self._body()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(body, handle, separators=(",", ":"))
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        if durable or not self._folder_synced:
            _fsync_dir(self.path.parent)
            self._folder_synced = True

    def _body(self) -> dict[str, Any]:
        return {
            "v": 1,
            "transfer_id": self.transfer_id,
            "sha256": self.sha256,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "upload_id": self.upload_id,
            "header": self.header.hex() if self.header is not None else None,
            "parts": [asdict(record) for record in sorted(self.parts.values(), key=lambda r: r.number)],
            "intents": {str(index): sha for index, sha in sorted(self.intents.items())},
        }

    def remove(self) -> None:
        for path in (self.path, self.path.with_name(self.path.name + ".tmp")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @classmethod
    def load(cls, path: Path, *, transfer_id: str, sha256: str, size: int) -> Manifest | None:
        """The manifest at ``path`` if it exists, parses and describes this transfer; None otherwise.

        A manifest that exists but is unusable is returned as None *after* being logged; the caller decides
        whether to abort the upload it names (``load_upload_id`` recovers that id when it is well-formed).
        """
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            logger.debug("discarding unreadable transfer manifest %s: %s", path, exc)
            return None
        try:
            return cls._from_body(path, body, transfer_id=transfer_id, sha256=sha256, size=size)
        except (KeyError, TypeError, ValueError) as exc:
            logger.debug(
                "discarding transfer manifest %s that does not describe this transfer: %s", path, exc
            )
            return None

    @staticmethod
    def load_upload_id(path: Path) -> str | None:
        """The upload id a (possibly unusable) manifest names, unvalidated; the store validates it."""
        with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            value = json.loads(path.read_text(encoding="utf-8")).get("upload_id")
            return value if isinstance(value, str) else None
        return None

    @classmethod
    def _from_body(cls, path: Path, body: Any, *, transfer_id: str, sha256: str, size: int) -> Manifest:
        if not isinstance(body, dict) or body.get("v") != 1:
            raise ValueError("not a version 1 manifest")
        if (body["transfer_id"], body["sha256"], body["size"]) != (transfer_id, sha256, size):
            raise ValueError("it describes another transfer")
        chunk_size, upload_id, header = body["chunk_size"], body["upload_id"], body["header"]
        if not _is_int(chunk_size) or chunk_size < 1 or not isinstance(upload_id, str):
            raise ValueError("bad chunk size or upload id")
        parts: dict[int, PartRecord] = {}
        for raw in body["parts"]:
            record = PartRecord(
                number=raw["number"],
                size=raw["size"],
                etag=raw["etag"],
                part_sha256=raw["part_sha256"],
                plain_sha256=raw["plain_sha256"],
            )
            if not (
                _is_int(record.number) and record.number >= 1 and _is_int(record.size) and record.size >= 0
            ):
                raise ValueError("bad part number or size")
            if not isinstance(record.etag, str):
                raise ValueError("bad part tag")
            if record.plain_sha256 is not None and not _HEX64.fullmatch(record.plain_sha256):
                raise ValueError("bad part digest")
            if record.part_sha256 is not None and not _HEX64.fullmatch(record.part_sha256):
                raise ValueError("bad part digest")
            parts[record.number] = record
        intents = {int(index): sha for index, sha in body["intents"].items() if _HEX64.fullmatch(sha)}
        return cls(
            path=path,
            transfer_id=transfer_id,
            sha256=sha256,
            size=size,
            chunk_size=chunk_size,
            upload_id=upload_id,
            header=bytes.fromhex(header) if header is not None else None,
            parts=parts,
            intents=intents,
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def state_lock(state_dir: Path, transfer: str) -> Iterator[None]:
    """Hold ``state_dir/<transfer>.lock`` exclusively; raise :class:`Conflict` if another process holds it.

    The lock file is removed on release. A process that opened the file just before it was removed would
    lock a file no longer in the folder, so after locking we check that the path still names our file.
    """
    path = state_dir / f"{transfer}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Conflict(f"another process is running transfer {transfer[:16]} (lock {path})") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)
