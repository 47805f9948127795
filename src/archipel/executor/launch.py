"""What a launch ships: a snapshot of the job's code, and its command with a once-per-site ``setup``."""

from __future__ import annotations

import hashlib
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archipel.errors import UserError
from archipel.models.job import StepSpec

if TYPE_CHECKING:
    from archipel.workspace import Workspace

__all__ = [
    "MAX_JOB_FOLDER_BYTES",
    "cache_key",
    "code_hash",
    "code_snapshot",
    "job_files",
    "launch_module",
    "pinned_model",
    "pinned_version",
    "with_setup",
]

_SKIP = {".git", ".archipel", "__pycache__", ".venv", ".hypothesis", "node_modules"}
MAX_JOB_FOLDER_BYTES = 100 * 2**20
"""What a run snapshots of a job's folder (and a remote run may upload) at most."""


def job_files(source: Path) -> list[tuple[Path, Path]]:
    """``(path, relative path)`` of the job's files (what a run snapshots and a remote run uploads), sorted;
    UserError beyond 100 MiB."""
    found, total = [], 0
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part in _SKIP for part in rel.parts) or not path.is_file():
            continue
        total += path.stat().st_size
        if total > MAX_JOB_FOLDER_BYTES:
            raise UserError(f"{source} holds more than 100 MiB of files; point workdir at the code only")
        found.append((path, rel))
    return found


def _tree_hash(pairs: list[tuple[Path, bytes]]) -> str:
    digest = hashlib.sha256()
    for rel, data in pairs:
        digest.update(str(rel).encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def code_hash(source: Path) -> str:
    """The tree hash :func:`code_snapshot` would return for ``source``, without copying."""
    return _tree_hash([(rel, path.read_bytes()) for path, rel in job_files(source)])


def code_snapshot(source: Path, dest: Path) -> str:
    """Copy the job's folder (without VCS, caches and archipel's state) to ``dest``; return its tree hash."""
    pairs = []
    for path, rel in job_files(source):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        pairs.append((rel, target.read_bytes()))
    dest.mkdir(parents=True, exist_ok=True)
    return _tree_hash(pairs)


def cache_key(
    step: StepSpec, plan: Mapping[str, Any], upstream: Mapping[tuple[str, str], str | None], code: str
) -> str:
    """What makes a step's outputs reusable: its spec, its code, and the sha256 of every input (the dataset
    versions the plan pinned; the outputs of the steps it reads, from ``upstream[(step, output)]``)."""
    inputs: dict[str, Any] = {}
    pins = plan.get("pins", {})
    for input_name, ref in step.input_refs().items():
        if ref.kind == "dataset":
            pin = pins.get(f"{ref.name}@v{ref.version or pinned_version(plan, ref.name)}")
            inputs[input_name] = pin["sha256"] if pin else str(ref)
        elif ref.kind == "step_output" and ref.step is not None:
            inputs[input_name] = upstream.get((ref.step, ref.name))
        elif ref.kind == "model":
            pinned = pinned_model(plan, ref.name, ref.version)
            inputs[input_name] = pins[pinned]["sha256"] if pinned else str(ref)
    blob = repr(sorted(inputs.items())) + code + repr(step.model_dump(mode="json"))
    return hashlib.sha256(blob.encode()).hexdigest()


def pinned_model(plan: Mapping[str, Any], name: str, version: int | None) -> str | None:
    """The pin (``models:/name/N``) the plan made for model ``name`` (at ``version`` if given)."""
    for ref in plan.get("pins", {}):
        if ref.startswith(f"models:/{name}/") and (version is None or ref == f"models:/{name}/{version}"):
            return ref
    return None


def pinned_version(plan: Mapping[str, Any], name: str) -> int | None:
    """The version of dataset ``name`` the plan was made for."""
    for ref in plan.get("pins", {}):
        if ref.startswith("models:/"):
            continue
        dataset, _, version = ref.partition("@v")
        if dataset == name and version.isdigit():
            return int(version)
    return None


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


def launch_module(workspace: Workspace, site: str, module: str, spec: dict[str, Any], *, folder: Path,
                  name: str, cpus: float, labels: Mapping[str, str],
                  secret_env: Mapping[str, str] | None = None) -> str:  # fmt: skip
    """Run ``python -m MODULE SPEC.json`` on ``site``'s compute (a replica, a drift job): ``spec`` plus the site's
    storage (``storage``: url and options) is written to a file in ``folder``; secrets go by inheritance only.
    The job's id."""
    import json
    import secrets

    from archipel.backends.compute.base import LaunchRequest, Resources

    storage = {"url": workspace.storage_url(site), "options": dict(workspace.site(site).storage_options)}
    folder.mkdir(parents=True, exist_ok=True)
    spec_file = folder / f"{site}-{secrets.token_hex(4)}.json"
    spec_file.write_text(json.dumps({"storage": storage, **spec}), encoding="utf-8")
    return workspace.compute(site).launch(
        LaunchRequest(
            [sys.executable, "-m", module, str(spec_file)],
            name=name,
            resources=Resources(cpus=cpus),
            labels=dict(labels),
            secret_env=dict(secret_env or {}),
        )
    )
