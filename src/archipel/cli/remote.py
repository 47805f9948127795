"""The CLI against a remote control plane: with ``ARCHIPEL_URL`` (and ``ARCHIPEL_TOKEN``) set, the commands below
become calls to that ``archipel server``'s REST API instead of reading a local workspace.

One table maps each command to its API call (``COMMANDS``; ``ACTIONS`` holds the ones that are more than one call,
such as ``run``, which sends the job's folder and then follows the run); the API runs the same services the local
commands do, so there is no second copy of what they decide. ``--json`` prints the API's answer as it is (the same
JSON the local command prints); without it the answer is shown as tables. Errors come back as the API's kind
(``NotFound``, ``PolicyViolation``...) and leave with the same exit codes as local ones. A command in neither table
says it works on a local workspace only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archipel.errors import (
    ArchipelError,
    BackendError,
    Conflict,
    Forbidden,
    NotFound,
    PolicyViolation,
    SpecError,
    TooLarge,
    Unauthorized,
)

__all__ = ["ACTIONS", "COMMANDS", "LOCAL", "call", "invocation", "remote_url", "run_remote"]

Call = tuple[str, str, dict[str, Any] | None, Any]
"""(method, path, query, body): a JSON body, or an :class:`Upload` sent as it is."""


@dataclass(frozen=True)
class Upload:
    """A body sent as raw bytes: a file streamed from disk, or bytes made here."""

    path: Path | None = None
    data: bytes = b""

    def chunks(self) -> Iterator[bytes]:
        if self.path is None:
            yield self.data
            return
        with self.path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                yield chunk


def _data_replicate(p: dict[str, Any]) -> Call:
    from archipel.data.ingest import parse_ref

    ref = parse_ref(p["ref"])
    body = {"to": p["to"], "streams": p["streams"], **({"version": ref.version} if ref.version else {})}
    return "POST", f"/api/v1/datasets/{ref.name}/replicas", None, body


def _model_replicate(p: dict[str, Any]) -> Call:
    from archipel.services.models import parse_model_ref

    name, version, alias = parse_model_ref(p["ref"])
    body = {"to": p["to"], **({"version": version} if version else {}), **({"alias": alias} if alias else {})}
    return "POST", f"/api/v1/models/{name}/replicas", None, body


def _monitor_run(p: dict[str, Any]) -> Call:
    from archipel.models.units import parse_duration

    try:
        body = {"window_s": parse_duration(p["window"])} if p["window"] else {}
    except ValueError as exc:
        raise SpecError(f"--window {p['window']!r}: {exc}") from None
    return "POST", f"/api/v1/monitoring/{p['deployment']}/run", None, body


def _data_add(p: dict[str, Any]) -> Call:
    from archipel.data.ingest import FORMATS

    path: Path = p["path"]
    if not path.is_file():
        raise NotFound(f"no file {path}")
    if path.suffix.lower() not in FORMATS:
        raise SpecError(f"{path}: unsupported format {path.suffix or '(none)'!r}; use .csv or .parquet")
    query = {"format": FORMATS[path.suffix.lower()], "site": p["site"], "classification": p["classification"],
             "jurisdiction": p["jurisdiction"], "description": p["description"], "filename": path.name}  # fmt: skip
    return (
        "POST",
        f"/api/v1/datasets/{p['name']}/versions",
        {k: v for k, v in query.items() if v},
        Upload(path),
    )


def _plan(p: dict[str, Any]) -> Call:
    from archipel.services.plan import load_plan_spec

    spec = load_plan_spec(p["spec"])  # the file's errors with file:line, before anything is sent
    return (
        "POST",
        "/api/v1/plans",
        {"objective": p["objective"]},
        spec.model_dump(mode="json", exclude_defaults=True),
    )


def _deploy(p: dict[str, Any]) -> Call:
    from archipel.models.deployment import DeploymentSpec
    from archipel.spec.validate import load_model_file

    spec = load_model_file(
        p["spec"], DeploymentSpec
    )  # the file's errors with file:line, before anything is sent
    return "POST", "/api/v1/deployments", None, spec.model_dump(mode="json", exclude_defaults=True)


def _cost(p: dict[str, Any]) -> Call:
    if p["since"]:
        raise SpecError("--since is not available against ARCHIPEL_URL yet")
    by = getattr(p["by"], "value", p["by"])
    if by == "tag":
        return "GET", f"/api/v1/cost/tags/{p['tag']}", None, None
    return "GET", "/api/v1/cost", {"by": by}, None


def _promote(p: dict[str, Any]) -> Call:
    return "POST", f"/api/v1/models/{p['name']}/promote", None, {"version": p["version"], "to": p["to"]}


def _token(p: dict[str, Any]) -> Call:
    body = {"scope": p["scope"], "name": p["name"] or "", "deployment": p["deployment"],
            "origins": list(p["origin"] or []), "ttl_days": p["ttl_days"]}  # fmt: skip
    return "POST", "/api/v1/tokens", None, body


COMMANDS: dict[tuple[str, ...], Callable[[dict[str, Any]], Call]] = {
    ("sites", "ls"): lambda p: ("GET", "/api/v1/sites", None, None),
    ("sites", "check"): lambda p: ("POST", "/api/v1/sites/check", None,
                                   {"sites": p["sites"] or None, "timeout_s": p["timeout"]}),
    ("offers",): lambda p: ("GET", "/api/v1/offers",
                            {"cpus": p["cpus"], "memory_gib": p["memory"], "spot": p["spot"], "limit": p["limit"]},
                            None),
    ("data", "add"): _data_add,
    ("data", "ls"): lambda p: ("GET", "/api/v1/datasets", None, None),
    ("data", "replicate"): _data_replicate,
    ("data", "show"): lambda p: ("GET", f"/api/v1/datasets/{p['name']}", None, None),
    ("policy", "check"): lambda p: ("GET", "/api/v1/policy/check",
                                    {"data": p["data"], "site": p["site"], "action": p["action"],
                                     **({"origin": p["origin"]} if p["origin"] else {})}, None),
    ("plan",): _plan,
    ("runs", "ls"): lambda p: ("GET", "/api/v1/runs", {"limit": p["limit"]}, None),
    ("runs", "show"): lambda p: ("GET", f"/api/v1/runs/{p['run_id']}", None, None),
    ("runs", "logs"): lambda p: ("GET", f"/api/v1/runs/{p['run_id']}/logs",
                                 {"step": p["step"]} if p["step"] else None, None),
    ("runs", "cancel"): lambda p: ("POST", f"/api/v1/runs/{p['run_id']}/cancel", None, None),
    ("models", "ls"): lambda p: ("GET", "/api/v1/models", None, None),
    ("models", "show"): lambda p: ("GET", f"/api/v1/models/{p['ref']}", None, None),
    ("models", "promote"): _promote,
    ("models", "replicate"): _model_replicate,
    ("deploy",): _deploy,
    ("deployments", "ls"): lambda p: ("GET", "/api/v1/deployments", None, None),
    ("deployments", "status"): lambda p: ("GET", f"/api/v1/deployments/{p['name']}", None, None),
    ("deployments", "rollback"): lambda p: ("POST", f"/api/v1/deployments/{p['name']}/rollback", None, None),
    ("deployments", "down"): lambda p: ("POST", f"/api/v1/deployments/{p['name']}/down", None, None),
    ("tokens", "ls"): lambda p: ("GET", "/api/v1/tokens", None, None),
    ("tokens", "create"): _token,
    ("tokens", "revoke"): lambda p: ("DELETE", f"/api/v1/tokens/{p['token_id']}", None, None),
    ("cost",): _cost,
    ("audit", "ls"): lambda p: ("GET", "/api/v1/audit",
                                {"limit": p["limit"], **({"action": p["action"]} if p["action"] else {})}, None),
    ("audit", "verify"): lambda p: ("GET", "/api/v1/audit/verify", None, None),
    ("monitor", "status"): lambda p: ("GET", "/api/v1/monitoring",
                                      {"deployment": p["deployment"]} if p["deployment"] else None, None),
    ("monitor", "run"): _monitor_run,
    ("triggers", "ls"): lambda p: ("GET", "/api/v1/triggers", None, None),
    ("monitor", "alerts"): lambda p: ("GET", "/api/v1/alerts",
                                      {"deployment": p["deployment"]} if p["deployment"] else None, None),
}  # fmt: skip

LOCAL: set[tuple[str, ...]] = {("init",), ("demo",), ("version",), ("schema",), ("server",), ("gateway",),
                                ("serve-replica",)}  # fmt: skip
"""Commands that run here whatever ARCHIPEL_URL says: they make or serve a workspace, or read none."""

KINDS: dict[str, type[ArchipelError]] = {cls.__name__: cls for cls in (
    Unauthorized, Forbidden, NotFound, PolicyViolation, Conflict, SpecError, TooLarge, BackendError)}  # fmt: skip


def remote_url() -> str | None:
    """The control plane's URL when the CLI is to use one (``ARCHIPEL_URL``), else None."""
    return os.environ.get("ARCHIPEL_URL", "").rstrip("/") or None


def call(method: str, path: str, query: dict[str, Any] | None = None, body: Any = None) -> Any:
    """One API call with ``ARCHIPEL_TOKEN``; the answer's JSON, or the API's error raised as its kind."""
    import httpx

    url, token = remote_url(), os.environ.get("ARCHIPEL_TOKEN", "")
    if not token:
        raise Unauthorized(
            "ARCHIPEL_URL is set but ARCHIPEL_TOKEN is not: create one with `archipel tokens create`"
        )
    headers = {"Authorization": f"Bearer {token}"}
    if isinstance(body, Upload):
        send: dict[str, Any] = {"content": body.chunks()}
        headers["Content-Type"] = "application/octet-stream"
    else:
        send = {"json": body}
    try:
        answer = httpx.request(method, f"{url}{path}", params=query, timeout=120, headers=headers, **send)
    except httpx.TransportError as err:
        raise BackendError(f"the control plane at {url} does not answer: {err}") from None
    _raise_for(answer)
    return answer.json()


def _raise_for(answer: Any) -> None:
    """Nothing for a 2xx/3xx answer; else the API's error raised as its kind (with the local exit code)."""
    if answer.status_code < 400:
        return
    try:
        problem = json.loads(answer.read())
    except ValueError:
        problem = {"error": answer.text[:500]}
    if "detail" in problem and "error" not in problem:  # FastAPI's validation errors
        details = problem["detail"] if isinstance(problem["detail"], list) else [{"msg": problem["detail"]}]
        problem = {"error": "; ".join(str(d.get("msg")) for d in details), "kind": "SpecError"}
    kind = KINDS.get(str(problem.get("kind")), ArchipelError)
    message = f"{problem.get('error')} (from {remote_url()}, HTTP {answer.status_code})"
    if kind is PolicyViolation:
        raise PolicyViolation(message, rule=problem.get("rule"))
    raise kind(message)


def _follow(run_id: str, step: str | None, *, quiet: bool = False, timeout: float | None = None) -> bool:
    """``runs logs -f``: the API's stream of the run's output, printed as it comes (unless ``quiet``), until the run
    has ended; False when ``timeout`` seconds passed without a line first."""
    import httpx

    from archipel.cli import render_runs

    query = {"step": step} if step else None
    headers = {"Authorization": f"Bearer {os.environ.get('ARCHIPEL_TOKEN', '')}"}
    try:
        with httpx.stream("GET", f"{remote_url()}/api/v1/runs/{run_id}/logs/stream", params=query,
                          headers=headers, timeout=httpx.Timeout(30, read=timeout)) as answer:  # fmt: skip
            _raise_for(answer)  # an unknown run or a refused token, said as for any command
            for line in answer.iter_lines():
                if line and not quiet:
                    item = json.loads(line)
                    render_runs.log_lines(item["step"], item["attempt"], item["line"])
    except httpx.ReadTimeout:
        return False
    except httpx.HTTPError as err:
        raise BackendError(f"the log stream from {remote_url()} broke: {err}") from None
    return True


def pack(folder: Path) -> bytes:
    """The job's folder as a gzip'd tar: the files a local run would snapshot (``launch.job_files``)."""
    import io
    import tarfile

    from archipel.executor.launch import job_files

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, rel in job_files(folder):
            tar.add(path, arcname=rel.as_posix(), recursive=False)
    return buffer.getvalue()


def _run(p: dict[str, Any]) -> None:
    """``archipel run FILE`` against the control plane: the spec checked here (file:line), the plan shown and
    confirmed as locally, the folder sent, the run followed through its log stream unless ``--detach``."""
    import sys

    import typer

    from archipel.cli import render
    from archipel.cli.common import print_json
    from archipel.services.plan import load_plan_spec

    spec: Path | None = p["spec"]
    if p["plan_file"] is not None:
        raise SpecError(
            "--plan runs a plan saved from this workspace; against ARCHIPEL_URL give the spec file"
        )
    if spec is None:
        raise SpecError("give a job or pipeline file")
    pipeline = load_plan_spec(spec)  # the file's errors with file:line, before anything is sent
    if not p["yes"] and not p["as_json"] and sys.stdin.isatty():
        planned = call("POST", "/api/v1/plans", None, pipeline.model_dump(mode="json", exclude_defaults=True))
        render.records(planned, title="plan")
        if not typer.confirm("Launch?", default=True):
            raise typer.Exit(1)
    body = Upload(data=pack(spec.resolve().parent))
    run = call("POST", "/api/v1/runs", {"spec": spec.name, "cache": p["cache"]}, body)
    if p["detach"]:
        if p["as_json"]:
            print_json({"run_id": run["id"], "server_started": False})
        else:
            render.console().print(f"Submitted [bold]{run['id']}[/] to {remote_url()}. "
                                   f"Follow it with: archipel runs logs {run['id']} -f")  # fmt: skip
        return
    if not p["as_json"]:
        render.console().print(f"Submitted [bold]{run['id']}[/] to {remote_url()}; following it.")
    _follow(run["id"], None, quiet=p["as_json"], timeout=p["timeout"] or None)
    view = call("GET", f"/api/v1/runs/{run['id']}")
    if p["as_json"]:
        print_json(view)
    else:
        keep = ("step", "state", "site", "offer", "spot", "recoveries", "cached_from", "message")
        render.records([{k: step[k] for k in keep} for step in view["steps"]], title=f"run {view['id']}")
        render.console().print(f"Run {view['id']} {view['state']}: cost ${view['cost_usd']:.6f} "
                               f"(planned ${view['planned_usd']:.4f})")  # fmt: skip
        last = {
            m["key"]: m for m in view["metrics"] if isinstance(m["value"], int | float)
        }  # the latest of each
        if last:
            render.console().print("Metrics: " + ", ".join(f"{k}={m['value']:.4g}" for k, m in last.items()))
    if view["state"] != "SUCCEEDED":
        raise typer.Exit(1)


ACTIONS: dict[tuple[str, ...], Callable[[dict[str, Any]], None]] = {("run",): _run}
"""Commands that are more than one call: they send a folder, then follow what it started."""


def invocation(argv: list[str]) -> tuple[tuple[str, ...], dict[str, Any]] | None:
    """The command path and parsed parameters of ``argv`` when it is to run remotely; None to run it here (help,
    ``--version``, or a command in :data:`LOCAL`)."""
    import typer

    from archipel.cli.main import app

    if any(a in ("--help", "--version") for a in argv):
        return None
    group = typer.main.get_command(app)
    ctx = group.make_context("archipel", list(argv))
    command: Any = group
    path: list[str] = []
    while hasattr(command, "resolve_command"):  # a group (typer's own click, not the click package)
        args = [*ctx._protected_args, *ctx.args]
        if not args:
            return None  # click shows the group's help
        name, sub, rest = command.resolve_command(ctx, args)
        if name is None or sub is None:
            return None
        path.append(name)
        if tuple(path) in LOCAL:
            return None
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return tuple(path), dict(ctx.params)


def run_remote(path: tuple[str, ...], params: dict[str, Any]) -> None:
    """Run the command at ``path`` with its parsed ``params`` against the control plane and print the answer."""
    from archipel.cli import render
    from archipel.cli.common import print_json

    if path in ACTIONS:
        ACTIONS[path](params)
        return
    if path not in COMMANDS:
        usable = ", ".join(" ".join(p) for p in sorted({*COMMANDS, *ACTIONS}))
        raise SpecError(f"`archipel {' '.join(path)}` works on a local workspace only; with ARCHIPEL_URL set, these "
                        f"run against the control plane: {usable}")  # fmt: skip
    if path == ("runs", "logs") and params.get("follow"):
        _follow(params["run_id"], params["step"])
        return
    answer = call(*COMMANDS[path](params))
    if params.get("as_json"):
        print_json(answer)
    elif path == ("tokens", "create"):
        render.console().print(f"Token {answer['id']} ({answer['scope']}); shown once, store it now:")
        print(answer["token"])
    elif path == ("runs", "logs"):
        print("\n".join(answer["lines"]))
    elif path == ("monitor", "run"):
        from archipel.cli.monitor_cmds import show_check

        show_check(answer)
    else:
        render.records(answer, title=path[0])
    if path == ("sites", "check") and any(r["health"] != "healthy" for r in answer):
        raise SystemExit(9)  # as the local command says it
