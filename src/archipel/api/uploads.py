"""The routes that take files: what ``archipel data add`` and ``archipel run`` send against ``ARCHIPEL_URL``.

- ``POST /api/v1/datasets/{name}/versions`` (``deploy``): the body is a CSV or Parquet file (``format`` says which),
  ingested as the dataset's next version at its home site exactly as ``data add`` does (the policies decide whether
  it may be stored there); answered 201 with the version, or 200 with the latest one when the file is unchanged.
- ``POST /api/v1/runs`` (``deploy``): the body is a gzip'd tar of the job's folder and ``spec`` names the job or
  pipeline file in it; planned and submitted as ``run`` does, then executed by this server's reconciler; answered
  201 with the run, which ``GET /api/v1/runs/{id}/logs/stream`` follows.

A body streams to a private folder under the workspace's state, never whole into memory, and is refused with 413
beyond its limit (``ARCHIPEL_MAX_UPLOAD_MIB`` for data, default 2048; 100 MiB for a job's folder, as for a local
run). The folder is deleted once the file is ingested or the code snapshotted, whatever happened. An archive's
members must be files or folders under its root: an absolute path, ``..``, a link or a device is refused (400)
before anything is unpacked, and so is a folder that would unpack beyond 100 MiB.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from archipel.api.app import NAME, Name, context, guard
from archipel.api.schemas import DatasetAddOut, RunOut
from archipel.errors import SpecError, TooLarge
from archipel.executor.launch import MAX_JOB_FOLDER_BYTES

__all__ = ["MAX_CODE_BYTES", "max_data_bytes", "router", "unpack"]

router = APIRouter()
MAX_CODE_BYTES = MAX_JOB_FOLDER_BYTES
"""A job's folder, packed or unpacked: the limit a local run's snapshot has."""
BINARY = {
    "required": True,
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}


def max_data_bytes() -> int:
    """The largest data file an upload may carry: ``ARCHIPEL_MAX_UPLOAD_MIB`` (default 2048) MiB."""
    raw = os.environ.get("ARCHIPEL_MAX_UPLOAD_MIB", "2048")
    try:
        return max(1, int(float(raw) * 2**20))
    except ValueError:
        return 2048 * 2**20


async def _receive(request: Request, dest: Path, limit: int) -> int:
    """Stream the request's body into ``dest``; its size, or TooLarge (checked on the declared length first)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is {int(declared):,} bytes; this server takes at most {limit:,}")
    size = 0
    with dest.open("wb") as handle:
        chunks: AsyncIterator[bytes] = request.stream()
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"the body is over {limit:,} bytes; this server takes at most {limit:,}")
            handle.write(chunk)
    if not size:
        raise SpecError("the body is empty: send the file")
    return size


def _scratch(workspace: Any) -> Path:
    """A new private folder for one upload, under the workspace's state (deleted by the caller)."""
    parent = workspace.state_dir / "uploads"
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Path(tempfile.mkdtemp(prefix="up-", dir=parent))


def unpack(archive: Path, dest: Path, *, limit: int = MAX_CODE_BYTES) -> None:
    """Unpack a gzip'd tar into ``dest``: every member checked first (a plain relative path, a file or folder, the
    sum of sizes within ``limit``), then extracted with tarfile's ``data`` filter as a second guard."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = tar.getmembers()
            total = 0
            for member in members:
                path = PurePosixPath(member.name)
                if path.is_absolute() or ".." in path.parts or member.name.startswith("\\"):
                    raise SpecError(f"the archive's {member.name!r} leaves its root")
                if not (member.isfile() or member.isdir()):
                    raise SpecError(
                        f"the archive's {member.name!r} is not a file or folder (links are refused)"
                    )
                total += member.size
                if total > limit:
                    raise SpecError(
                        f"the job's folder unpacks beyond {limit // 2**20} MiB; send the code only"
                    )
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SpecError(f"the body is not a gzip'd tar of the job's folder: {exc}") from None


def _relative(text: str, root: Path) -> str:
    """An error message that names files as the client knows them, not by this server's scratch folder."""
    return text.replace(f"{root}/", "").replace(str(root), ".")


@guard(router, "POST", "/api/v1/datasets/{name}/versions", "deploy", tags=["data"], status_code=201,
       openapi_extra={"requestBody": BINARY},
       responses={200: {"description": "The file is the latest version already: nothing was stored.",
                        "model": DatasetAddOut},
                  413: {"description": "The body is larger than this server takes"}})  # fmt: skip
async def add_version(
    request: Request,
    response: Response,
    name: Name,
    format: Annotated[Literal["csv", "parquet"], Query(description="What the body is.")],
    site: Annotated[
        str | None, Query(pattern=NAME, description="Home site (a new dataset needs it).")
    ] = None,
    classification: Annotated[
        Literal["public", "internal", "confidential", "pii", "phi"] | None,
        Query(description="A new dataset needs it."),
    ] = None,
    jurisdiction: Annotated[
        str | None, Query(pattern=r"^[A-Za-z]{2}(-[A-Za-z0-9]{1,3})?$", description="Default: the site's.")
    ] = None,
    description: Annotated[str, Query(max_length=2000)] = "",
    filename: Annotated[
        str | None,
        Query(max_length=255, pattern=r"^[^/\\]+$", description="The file's name where it came from."),
    ] = None,
) -> DatasetAddOut:
    """Ingest the body as the dataset's next version at its home site, as ``archipel data add`` does."""
    from archipel.services.data import add_dataset

    workspace, engine = context(request)
    scratch = _scratch(workspace)
    try:
        file = scratch / f"upload.{format}"
        await _receive(request, file, max_data_bytes())
        source = f"upload:{filename or file.name}"
        report = await run_in_threadpool(
            add_dataset, workspace, engine, name, file, site=site, classification=classification,
            jurisdiction=jurisdiction, description=description, source=source,
        )  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not report.created:
        response.status_code = 200
    return {"created": report.created, **report.version.as_json()}  # type: ignore[return-value]


@guard(router, "POST", "/api/v1/runs", "deploy", tags=["runs"], status_code=201,
       openapi_extra={"requestBody": BINARY},
       responses={413: {"description": "The body is larger than this server takes"}})  # fmt: skip
async def submit(
    request: Request,
    spec: Annotated[
        str,
        Query(
            pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*\.ya?ml$",
            max_length=255,
            description="The job or pipeline file, by its path in the archive.",
        ),
    ],
    cache: Annotated[bool, Query(description="Reuse the outputs of unchanged steps.")] = True,
    objective: Literal["cost", "time"] = "cost",
) -> RunOut:
    """Plan the job or pipeline the archive holds and submit it, as ``archipel run --detach`` does; this server's
    reconciler executes it."""
    workspace, engine = context(request)
    scratch = _scratch(workspace)
    try:
        archive = scratch / "code.tar.gz"
        await _receive(request, archive, MAX_CODE_BYTES)
        root = scratch / "code"
        root.mkdir()
        await run_in_threadpool(unpack, archive, root)
        archive.unlink()
        return await run_in_threadpool(_plan_and_submit, workspace, engine, root, spec, cache, objective)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _plan_and_submit(
    workspace: Any, engine: Any, root: Path, spec: str, cache: bool, objective: str
) -> dict[str, Any]:
    from archipel.services.plan import load_plan_spec, make_plan
    from archipel.services.runs import get_run, submit_run

    path = (root / spec).resolve()
    if ".." in PurePosixPath(spec).parts or not path.is_relative_to(root.resolve()):
        raise SpecError(f"spec {spec!r} leaves the archive")
    if not path.is_file():
        raise SpecError(f"spec {spec!r} is not a file in the archive")
    try:
        result = make_plan(workspace, engine, load_plan_spec(path, shown=spec), objective=objective)
    except SpecError as exc:
        raise SpecError(_relative(str(exc), root)) from None
    run_id = submit_run(workspace, engine, result, workdir=path.parent, reuse=cache)
    return get_run(engine, run_id).as_json()
