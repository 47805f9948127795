"""Run the commands the docs show, as a reader would type them.

Every fenced block whose info string is ``bash`` is executed: the blocks of one Markdown file, in order, as one bash
session (``set -euo pipefail``; variables carry from block to block), in a fresh folder holding a copy of
``examples/``, with this installation's ``archipel`` first on ``PATH``. Other fences (``text``, ``yaml``,
``console``...) are shown, never run: synopses with placeholders belong in ``text``.

A block can carry one marker, an HTML comment on the line just above its fence:

- ``<!-- docs: background ready=URL -->``: a long-running command (a server). It runs in the background, in its own
  process group, and the session waits until ``URL`` answers before going on; it is stopped when the file ends.
- ``<!-- docs: fails -->``: each command shows an error; each must exit non-zero (and print something).
- ``<!-- docs: no-test REASON -->``: not run (a real cloud, or what CI runs anyway); counted by the docs test.

``<!-- docs: ports=8080,8000 -->`` anywhere in a file: those port numbers, in its ``bash`` blocks, are replaced by
free ports, so the examples can say 8080 and the test never collides with another process.

``python -m tests.docs.doccmds FILE.md`` runs one file and prints what it ran.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Block", "DocRun", "blocks", "run_doc", "script"]

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*docs:\s*(background|fails|no-test)\b(.*?)-->\s*$")
PORTS = re.compile(r"<!--\s*docs:\s*ports=([\d,\s]+)-->")
MODES = ("run", "background", "fails", "no-test")


@dataclass(frozen=True)
class Block:
    """One ``bash`` block: where its first line is (1-based), its text, its marker's mode and argument."""

    path: Path
    line: int
    text: str
    mode: str = "run"
    arg: str = ""

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def ready(self) -> str:
        found = re.search(r"ready=(\S+)", self.arg)
        if not found:
            raise ValueError(f"{self.where}: a background block needs ready=URL in its marker")
        return found.group(1)


def blocks(path: Path) -> list[Block]:
    """The ``bash`` blocks of a Markdown file, with their markers; a marker above another fence is an error."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        fence, lang = opened.group(2), opened.group(3)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence)), None)
        if end is None:
            raise ValueError(f"{path.name}:{i + 1}: a code fence that never closes")
        marker = MARKER.match(lines[i - 1]) if i > 0 else None
        if marker and lang != "bash":
            raise ValueError(
                f"{path.name}:{i}: a docs marker above a {lang or 'plain'} fence (only bash runs)"
            )
        if lang == "bash":
            mode, arg = (marker.group(1), marker.group(2).strip()) if marker else ("run", "")
            if mode == "no-test" and not arg:
                raise ValueError(f"{path.name}:{i}: no-test needs a reason")
            found.append(Block(path, i + 2, "\n".join(lines[i + 1 : end]), mode, arg))
        i = end + 1
    return found


def _commands(block: Block) -> list[tuple[int, str]]:
    """A block's commands (comments and blank lines dropped, ``\\`` continuations joined), with their lines."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for offset, raw in enumerate(block.text.splitlines()):
        text = raw.strip()
        if pending is None and (not text or text.startswith("#")):
            continue
        start, sofar = pending or (block.line + offset, "")
        if text.endswith("\\"):
            pending = (start, sofar + text[:-1] + " ")
            continue
        out.append((start, sofar + text))
        pending = None
    return out


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


PRELUDE = r"""set -euo pipefail
set -a  # variables reach the background blocks too
__bg=()
__stop() { for p in "${__bg[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap __stop EXIT
trap 'echo "docs-test: failed at script line $LINENO" >&2' ERR
__ready() {  # url log: wait until the url answers (any HTTP status), or show the server's log
  for _ in $(seq 1 600); do
    if curl -s -o /dev/null --max-time 2 "$1"; then return 0; fi
    sleep 0.1
  done
  echo "docs-test: $1 never answered; the server said:" >&2; cat "$2" >&2; return 1
}
"""


def script(path: Path, found: list[Block], ports: dict[str, int]) -> tuple[str, dict[int, str]]:
    """The bash session for a file's blocks, and which doc line each script line comes from."""
    out = [*PRELUDE.splitlines(), "set -v  # each line as it is read, then what it printed"]
    where: dict[int, str] = {}

    def emit(text: str, at: str | None = None) -> None:
        for line in text.splitlines():
            out.append(line)
            if at is not None:
                where[len(out)] = at

    for n, block in enumerate(found):
        text = block.text
        for port, free in ports.items():
            text = re.sub(rf"\b{port}\b", str(free), text)
        emit(f"# --- {block.where} ({block.mode})")
        if block.mode == "no-test":
            continue
        if block.mode == "run":
            for offset, line in enumerate(text.splitlines()):
                emit(line, f"{path.name}:{block.line + offset}")
        elif block.mode == "background":
            url = block.ready
            for port, free in ports.items():
                url = re.sub(rf"\b{port}\b", str(free), url)
            log = f".docs-bg-{n}.log"
            emit(f"echo {_quote('$ ' + text)} ; setsid bash -c {_quote(text)} > {log} 2>&1 &", block.where)
            emit(f"__bg+=($!); __ready {_quote(url)} {log}", block.where)
        else:  # fails: every command must exit non-zero and say why
            for line_no, command in _commands(Block(path, block.line, text)):
                at = f"{path.name}:{line_no}"
                emit(f"echo {_quote('$ ' + command)}", at)
                emit(f"if __said=$( {command} 2>&1 ); then echo \"$__said\"; echo 'docs-test: {at} was "
                     f"expected to fail' >&2; exit 1; fi", at)  # fmt: skip
                emit('echo "$__said"; test -n "$__said"', at)
    return "\n".join(out) + "\n", where


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class DocRun:
    path: Path
    returncode: int
    output: str
    failed_at: str | None
    blocks: list[Block]


def _stop_leftovers(workdir: Path) -> None:
    """Stop what the session left running (replicas and jobs run under detached supervisors, so a page that fails
    half-way would leave them): every process whose command line or working folder is inside ``workdir``."""
    import signal

    root = str(workdir.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if root in cmdline or cwd == root or cwd.startswith(root + "/"):
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)


def run_doc(
    path: Path, workdir: Path, *, timeout_s: float = 600, env: dict[str, str] | None = None
) -> DocRun:
    """Run a file's ``bash`` blocks in ``workdir`` (made here, with ``examples/`` copied in)."""
    found = blocks(path)
    text = path.read_text(encoding="utf-8")
    ports = {
        p.strip(): _free_port() for m in PORTS.finditer(text) for p in m.group(1).split(",") if p.strip()
    }
    body, where = script(path, found, ports)
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "examples", workdir / "examples", dirs_exist_ok=True)
    (workdir / ".docs-session.sh").write_text(body, encoding="utf-8")
    environ = dict(env if env is not None else os.environ)
    environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}"
    environ.setdefault("ARCHIPEL_HOME", str(workdir / ".archipel-home"))
    for var in ("ARCHIPEL_WORKSPACE", "ARCHIPEL_DB_URL", "ARCHIPEL_URL", "ARCHIPEL_TOKEN"):
        environ.pop(var, None)
    proc = subprocess.run(
        ["bash", "-x", ".docs-session.sh"] if os.environ.get("DOCS_TRACE") else ["bash", ".docs-session.sh"],
        cwd=workdir,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s,
    )
    _stop_leftovers(workdir)
    failed = re.findall(r"docs-test: failed at script line (\d+)", proc.stdout)
    failed_at = where.get(int(failed[-1]), f"script line {failed[-1]}") if failed else None
    return DocRun(path, proc.returncode, proc.stdout, failed_at, found)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Run the bash blocks of Markdown files as the docs test does"
    )
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args()
    code = 0
    for path in args.files:
        workdir = Path(tempfile.mkdtemp(prefix="archipel-docs-"))
        run = run_doc(path.resolve(), workdir)
        print(run.output)
        state = "ok" if run.returncode == 0 else f"FAILED (exit {run.returncode}) at {run.failed_at}"
        counts = {m: sum(b.mode == m for b in run.blocks) for m in MODES}
        print(f"{path}: {state}; blocks {counts}; folder {workdir}")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        code |= run.returncode != 0
    return code


if __name__ == "__main__":
    sys.exit(main())
