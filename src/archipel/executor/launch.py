"""What a launch ships: a snapshot of the job's code, and its command with a once-per-site ``setup``."""

from __future__ import annotations

import hashlib
import shlex
import shutil
import sys
from pathlib import Path

from archipel.errors import UserError

__all__ = ["code_snapshot", "with_setup"]

_SKIP = {".git", ".archipel", "__pycache__", ".venv", ".hypothesis", "node_modules"}
_MAX_CODE_BYTES = 100 * 2**20


def code_snapshot(source: Path, dest: Path) -> str:
    """Copy the job's folder (without VCS, caches and archipel's state) to ``dest``; return its tree hash."""
    digest = hashlib.sha256()
    total = 0
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part in _SKIP for part in rel.parts) or not path.is_file():
            continue
        total += path.stat().st_size
        if total > _MAX_CODE_BYTES:
            raise UserError(f"{source} holds more than 100 MiB of files; point workdir at the code only")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        digest.update(str(rel).encode() + b"\0" + hashlib.sha256(target.read_bytes()).digest())
    dest.mkdir(parents=True, exist_ok=True)
    return digest.hexdigest()


def with_setup(run: str, setup: str, workdir: Path, markers: Path) -> str:
    """``run`` preceded by ``setup`` unless that already ran where ``markers`` lives (one folder per site): a
    requirements file (``*.txt`` in ``workdir``) is installed with this installation's pip; anything else runs as
    a shell command. Once per site and content (the setup text and the requirements file's bytes)."""
    requirements = (workdir / setup).resolve()
    if setup.endswith(".txt") and requirements.is_file():
        command = f"{shlex.quote(sys.executable)} -m pip install -q -r {shlex.quote(str(requirements))}"
        content = requirements.read_bytes()
    else:
        command, content = setup, b""
    digest = hashlib.sha256(command.encode() + b"\0" + content).hexdigest()[:32]
    marker = shlex.quote(str(markers / f"{digest}.done"))
    return (
        f"if [ ! -e {marker} ]; then ( {command} ) || exit $?; mkdir -p {shlex.quote(str(markers))} && "
        f"touch {marker}; fi; {run}"
    )
