"""The REST API as a client sees it: `archipel server --port 0` as a process over a demo workspace with data,
every route enumerated from the OpenAPI document (401 without a token, 403 one rung too low), the answers equal to
the CLI's `--json`, bad input answered 4xx with the server still up, and no bind beyond loopback without tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from archipel.services.tokens import SCOPES
from tests.api.conftest import api_workspace, start_server, tokens_for
from tests.conftest import require
from tests.demo_run import DemoRun
from tests.serving.conftest import stop


@dataclass(frozen=True)
class Server:
    url: str
    ws: Any
    tokens: dict[str, str]  # scope -> token

    def get(self, path: str, scope: str = "read", **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.tokens[scope]}"}, **kwargs)

    def post(self, path: str, scope: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(
            self.url + path, headers={"Authorization": f"Bearer {self.tokens[scope]}"}, **kwargs
        )


def _cli(ws: Any, *args: str) -> Any:
    done = subprocess.run([sys.executable, "-m", "archipel.cli", "-w", str(ws.root), *args, "--json"],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    ws = api_workspace(tmp_path_factory.mktemp("api"))
    tokens = tokens_for(ws, *SCOPES, name="api")
    proc, url = start_server(ws.root)
    try:
        yield Server(url, ws, tokens)
        assert proc.poll() is None, "the server died during the tests"
    finally:
        stop(proc)


def _routes(server: Server) -> dict[tuple[str, str], str | None]:
    """(method, path) -> the scope the OpenAPI document says the route needs (None: public)."""
    from archipel.api import SCOPE_KEY

    spec = httpx.get(server.url + "/openapi.json").json()
    return {(method.upper(), path): op.get(SCOPE_KEY) for path, item in spec["paths"].items()
            for method, op in item.items()}  # fmt: skip


def _call(server: Server, method: str, path: str, token: str | None) -> httpx.Response:
    path = path.replace("{name}", "patients-eu").replace("{run_id}", "r-1").replace("{token_id}", "nope")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = (
        {"version": 1} if path.endswith("/promote") else {"scope": "read"} if path.endswith("/tokens") else {}
    )
    query = {"data": "patients-eu", "site": "aws-us-east-1"} if path.endswith("/policy/check") else {}
    return httpx.request(method, server.url + path, headers=headers, json=body if method == "POST" else None,
                         params=query, timeout=60)  # fmt: skip


def test_every_route_needs_a_token_and_the_scope_it_documents(server: Server) -> None:
    documented = _routes(server)
    assert [route for route, scope in documented.items() if scope is None] == [("GET", "/api/health")]
    routes = {route: scope for route, scope in documented.items() if scope is not None}
    assert len(routes) >= 25 and set(routes.values()) == {"read", "deploy", "admin"}
    for (method, path), needed in routes.items():
        answer = _call(server, method, path, None)
        assert answer.status_code == 401, (method, path, answer.text)
        assert answer.headers["www-authenticate"] == "Bearer" and "token" in answer.json()["error"]
        assert _call(server, method, path, "arch_000000000000_" + "x" * 43).status_code == 401
        if needed != "read":  # one rung below what the route needs
            lower = SCOPES[SCOPES.index(needed) - 1]
            answer = _call(server, method, path, server.tokens[lower])
            assert answer.status_code == 403, (method, path, lower, answer.text)
            assert f"needs {needed}" in answer.json()["error"]
    assert httpx.get(server.url + "/api/health").json()["status"] == "ok"  # public


def test_reads_equal_the_clis_json(server: Server) -> None:
    ws = server.ws
    assert server.get("/api/v1/datasets").json() == _cli(ws, "data", "ls")
    assert server.get("/api/v1/datasets/patients-eu").json() == _cli(ws, "data", "show", "patients-eu")
    sites = server.get("/api/v1/sites").json()
    assert [s["name"] for s in sites] == [s["name"] for s in _cli(ws, "sites", "ls")] and len(sites) == 3
    assert server.get("/api/v1/cost", params={"by": "provider"}).json() == _cli(
        ws, "cost", "--by", "provider"
    )
    offers = server.get("/api/v1/offers", params={"cpus": 4, "memory_gib": 16}).json()
    assert offers == _cli(ws, "offers", "--cpus", "4", "--memory", "16")[: len(offers)] and offers
    verified = server.get("/api/v1/audit/verify").json()
    assert verified["ok"] is True and verified["entries"] > 0


def test_policy_check_and_a_dry_run_plan_explain_their_refusals(server: Server) -> None:
    decision = server.get(
        "/api/v1/policy/check", params={"data": "patients-eu", "site": "aws-us-east-1"}
    ).json()
    assert decision["allowed"] is False and decision["rule"] == "default-personal-data-residency"
    job = {"name": "t", "run": "python train.py", "inputs": ["patients-eu"], "resources": {"cpus": 2}}
    plan = server.post("/api/v1/plans", "read", json=job)
    assert plan.status_code == 200, plan.text
    body = plan.json()
    chosen = {p["step"]: p["chosen"]["site"] for p in body["steps"]}
    assert chosen["t"] in ("onprem-frankfurt", "gcp-europe-west4")
    refused = [r for r in body["steps"][0]["rejections"] if r["site"] == "aws-us-east-1"]
    assert refused and "default-personal-data-residency" in json.dumps(refused)
    assert server.get("/api/v1/runs").json() == []  # a dry run launches nothing


def test_tokens_are_created_listed_without_secrets_and_revoked(server: Server) -> None:
    made = server.post(
        "/api/v1/tokens", "admin", json={"scope": "read", "name": "from-api", "origins": ["eu"]}
    )
    assert (
        made.status_code == 201
        and made.json()["token"].startswith("arch_")
        and made.json()["origins"] == ["EU"]
    )
    listed = server.get("/api/v1/tokens", "admin").json()
    assert made.json()["id"] in [t["id"] for t in listed] and not any("token" in t for t in listed)
    fresh = {"Authorization": f"Bearer {made.json()['token']}"}
    assert httpx.get(server.url + "/api/v1/sites", headers=fresh).status_code == 200
    revoked = httpx.delete(server.url + f"/api/v1/tokens/{made.json()['id']}",
                           headers={"Authorization": f"Bearer {server.tokens['admin']}"})  # fmt: skip
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert httpx.get(server.url + "/api/v1/sites", headers=fresh).status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/api/v1/datasets/nope", {}, 404),
        ("GET", "/api/v1/runs/nope", {}, 404),
        ("GET", "/api/v1/models/nope", {}, 404),
        ("GET", "/api/v1/offers", {"params": {"cpus": -1}}, 422),
        ("GET", "/api/v1/cost", {"params": {"by": "color"}}, 422),
        ("GET", "/api/v1/policy/check", {"params": {"data": "patients-eu", "site": "mars"}}, 404),
        (
            "POST",
            "/api/v1/plans",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
        ),
        ("POST", "/api/v1/plans", {"json": {"name": "t", "run": "x", "resources": {"cpus": "many"}}}, 422),
        # a pipeline's DAG rules, which its JSON schema cannot say (see schemathesis.toml)
        ("POST", "/api/v1/plans", {"json": {"name": "p", "steps": {"a": {"run": "x", "needs": ["b"]}}}}, 422),
        ("POST", "/api/v1/plans", {"json": {"name": "p", "steps": {"a": {"run": "x", "needs": ["a"]}}}}, 422),
        ("GET", "/api/v1/cost/tags/no%20spaces", {}, 422),
        ("POST", "/api/v1/plans", {"json": {"name": "t", "run": "x", "inputs": ["no-such-data"]}}, 404),
        ("POST", "/api/v1/tokens", {"json": {"scope": "root"}}, 422),
        ("POST", "/api/v1/models/nope/promote", {"json": {"version": 0}}, 422),
        ("POST", "/api/v1/sites/check", {"json": {"sites": ["mars"]}}, 404),
    ],
)
def test_bad_input_gets_a_4xx_with_a_message_and_the_server_stays_up(
    server: Server, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    headers = {"Authorization": f"Bearer {server.tokens['admin']}", **kwargs.pop("headers", {})}
    answer = httpx.request(method, server.url + path, headers=headers, timeout=30, **kwargs)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body.get("error") or body.get("detail")
    assert httpx.get(server.url + "/api/health").status_code == 200


def test_a_bind_beyond_loopback_is_refused_while_no_token_exists(tmp_path: Path) -> None:
    from archipel.services.init import init_workspace

    ws = init_workspace(tmp_path / "ws", demo=True)
    done = subprocess.run([sys.executable, "-m", "archipel.cli", "-w", str(ws.root), "server", "--port", "0",
                           "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0 and "refusing to serve beyond loopback" in done.stderr + done.stdout


def _remote(server: Server, *args: str, token: str | None = "read") -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it against the control plane: ARCHIPEL_URL and ARCHIPEL_TOKEN, no workspace here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIPEL_WORKSPACE")}
    env.update(ARCHIPEL_URL=server.url, NO_COLOR="1", COLUMNS="200")
    env.pop("ARCHIPEL_TOKEN", None)
    if token:
        env["ARCHIPEL_TOKEN"] = server.tokens.get(token, token)
    return subprocess.run([sys.executable, "-m", "archipel.cli", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=server.ws.root.parent)  # fmt: skip


def test_the_cli_runs_against_the_control_plane_with_archipel_url(server: Server) -> None:
    ws = server.ws
    for args in (("data", "show", "patients-eu"), ("sites", "ls"), ("runs", "ls"), ("audit", "ls")):
        remote = _remote(server, *args, "--json")
        assert remote.returncode == 0, remote.stderr
        local = _cli(ws, *args)
        if args == ("sites", "ls"):  # health is re-checked by the time the second reads it: compare the rest
            local, remote_rows = ([{k: v for k, v in s.items() if k != "checked_at"} for s in rows]
                                  for rows in (local, json.loads(remote.stdout)))  # fmt: skip
            assert remote_rows == local
        elif args == ("audit", "ls"):  # the remote read is itself no entry; every local entry is there
            assert [e["seq"] for e in json.loads(remote.stdout)][: len(local)] == [e["seq"] for e in local]
        else:
            assert json.loads(remote.stdout) == local
    shown = _remote(server, "data", "show", "patients-eu")
    assert shown.returncode == 0 and "patients-eu" in shown.stdout and "phi" in shown.stdout
    # errors come back as their kind, with the local exit codes
    refused = _remote(server, "policy", "check", "--data", "patients-eu", "--site", "aws-us-east-1", "--json")
    assert refused.returncode == 0 and json.loads(refused.stdout)["allowed"] is False
    missing = _remote(server, "data", "show", "nope")
    assert (
        missing.returncode == _cli_code(ws, "data", "show", "nope") != 0
        and "no dataset 'nope'" in missing.stderr
    )
    low = _remote(server, "tokens", "ls")
    assert low.returncode != 0 and "needs admin" in low.stderr
    assert "ARCHIPEL_TOKEN is not" in _remote(server, "runs", "ls", token=None).stderr
    local_only = _remote(server, "chaos", "kill-site", "onprem-frankfurt")
    assert local_only.returncode != 0 and "works on a local workspace only" in local_only.stderr
    made = _remote(server, "tokens", "create", "--scope", "read", "--name", "remote", token="admin")
    assert made.returncode == 0, made.stderr
    fresh = made.stdout.strip().splitlines()[-1]
    assert _remote(server, "runs", "ls", token=fresh).returncode == 0


def _cli_code(ws: Any, *args: str) -> int:
    return subprocess.run([sys.executable, "-m", "archipel.cli", "-w", str(ws.root), *args], capture_output=True,
                          timeout=60).returncode  # fmt: skip


def _checked(client: httpx.Client, doc: dict[str, Any], method: str, path: str, status: int = 200,
             ids: dict[str, list[str]] | None = None, **kwargs: Any) -> Any:  # fmt: skip
    """Call the operation ``method path`` once per value of its path parameter (from ``ids``; ``name`` is the
    demo's dataset or model), check each answer's status and that it is the document's schema; the last answer."""
    from jsonschema import Draft202012Validator

    answers = doc["paths"][path][method.lower()]["responses"]
    validator = Draft202012Validator({**answers[str(status)]["content"]["application/json"]["schema"],
                                      "components": doc["components"]})  # fmt: skip
    values = {
        "name": ["patients-eu" if path.startswith("/api/v1/datasets/") else "malignancy"],
        **(ids or {}),
    }
    key = next((k for k in values if f"{{{k}}}" in path), None)
    urls = [path.replace(f"{{{key}}}", v) for v in values[key]] if key else [path]
    assert urls and "{" not in "".join(urls), (path, "a path parameter this test does not know")
    for url in urls:
        got = client.request(method, url, **kwargs)
        assert got.status_code == status, (method, url, got.text[:2000])
        errors = [e.message for e in validator.iter_errors(got.json())]
        assert not errors, (method, url, errors[:5])
    return got.json()


@pytest.mark.slow
def test_every_answer_on_a_demo_workspace_is_its_documented_schema(demo_run: DemoRun, tmp_path: Path) -> None:
    """The server checks every answer against its route's schema (a mismatch is a 500), but the workspaces above
    hold no runs, models, deployments, drift reports or alerts: here every route but three answers on a copy of what
    `archipel demo` leaves (tests/demo_run.py), as the OpenAPI document says (read routes enumerated from it) and as
    the CLI's `--json` prints. Not called: a cancel needs a live run, a rollback starts replicas, and a deploy or a
    down would replace or stop the demo's kept replicas, which the copy shares (their answer is the deployment, as
    GET shows it; test_a_deployment_started_and_stopped_through_the_control_plane calls both)."""
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        require("jsonschema", "pip install jsonschema (the dev extra has it, through schemathesis)")
    from archipel.cost.report import GROUPS
    from archipel.workspace import load_workspace

    ws_dir = demo_run.copy(tmp_path / "ws")
    ws = load_workspace(ws_dir)
    token = tokens_for(ws, "admin", name="schema-check")["admin"]
    proc, url = start_server(ws_dir)
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    try:
        doc = client.get("/openapi.json").json()
        ids = {"run_id": [r["id"] for r in client.get("/api/v1/runs").json()], "key": ["team"]}
        queries = {"/api/v1/policy/check": [{"data": "patients-eu", "site": "aws-us-east-1"}],
                   "/api/v1/cost": [{"by": by, "since_hours": 24 * 365} for by in GROUPS if by != "tag"]}  # fmt: skip
        read: dict[str, Any] = {}
        stream = "/api/v1/runs/{run_id}/logs/stream"
        for path, item in doc["paths"].items():
            if "get" in item and path.startswith("/api/") and path != stream:
                for query in queries.get(path, [{}]):
                    read[path] = _checked(client, doc, "GET", path, ids=ids, params=query)
        assert ids["run_id"] and all(read[f"/api/v1/{what}"] for what in ("models", "deployments", "alerts"))
        assert any(r["features"] and r["histograms"] for r in read["/api/v1/monitoring"])
        actions = [  # (path, status, body): the cheap ones (see the docstring)
            ("/api/v1/plans", 200, {"name": "t", "run": "x", "inputs": ["diagnosis-codes", "patients-eu"],
                                    "constraints": {"sites": ["gcp-europe-west4", "onprem-frankfurt"]}}),
            ("/api/v1/models/{name}/promote", 200, {"version": 1, "to": "staging"}),
            ("/api/v1/sites/check", 200, {}),
            ("/api/v1/datasets/{name}/replicas", 200, {"to": "gcp-europe-west4"}),  # there already: moves nothing
            ("/api/v1/models/{name}/replicas", 200, {"to": "onprem-frankfurt", "alias": "production"}),  # likewise
            ("/api/v1/tokens", 201, {"scope": "read", "ttl_days": 1, "origins": ["eu"]}),
        ]  # fmt: skip
        acted = {
            path: _checked(client, doc, "POST", path, status, json=body) for path, status, body in actions
        }
        assert acted["/api/v1/plans"]["steps"][0]["chosen"]["moves"][0]["from"] == "aws-us-east-1"
        assert acted["/api/v1/models/{name}/replicas"]["bytes_moved"] == 0  # a copy was there: nothing moved
        new = {"token_id": [acted["/api/v1/tokens"]["id"]]}
        assert _checked(client, doc, "DELETE", "/api/v1/tokens/{token_id}", ids=new)["revoked_at"]
        # the log stream of an ended run: every line it printed, each its documented object, then the end
        from jsonschema import Draft202012Validator

        line_schema = doc["paths"][stream]["get"]["responses"]["200"]["content"]["application/x-ndjson"][
            "schema"
        ]
        for run_id in ids["run_id"]:
            got = client.get(stream.replace("{run_id}", run_id))
            assert got.status_code == 200 and got.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(x) for x in got.text.splitlines()]
            assert lines and not [
                e.message for x in lines for e in Draft202012Validator(line_schema).iter_errors(x)
            ]
            assert [f"{x['step']}#{x['attempt']} {x['line']}" for x in lines] == client.get(
                f"/api/v1/runs/{run_id}/logs"
            ).json()["lines"]
        # and `runs logs -f` against the control plane follows that stream, printing what the local command prints
        env = {**os.environ, "ARCHIPEL_URL": str(client.base_url).rstrip("/"), "ARCHIPEL_TOKEN": token,
               "NO_COLOR": "1", "COLUMNS": "200"}  # fmt: skip
        followed = subprocess.run([sys.executable, "-m", "archipel.cli", "runs", "logs", ids["run_id"][0], "-f"],
                                  capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)  # fmt: skip
        local = subprocess.run([sys.executable, "-m", "archipel.cli", "-w", str(ws_dir), "runs", "logs",
                                ids["run_id"][0]], capture_output=True, text=True, timeout=60,
                               env={**env, "ARCHIPEL_URL": ""})  # fmt: skip
        assert followed.returncode == 0 and followed.stdout == local.stdout and local.stdout.strip(), (
            followed.stderr
        )
        called = (
            {f"GET {p}" for p in read}
            | {f"POST {p}" for p in acted}
            | {"DELETE /api/v1/tokens/{token_id}"}
            | {f"GET {stream}"}
        )
        documented = {
            f"{m.upper()} {p}" for p, item in doc["paths"].items() for m in item if p.startswith("/api/")
        }
        assert (
            documented - called
            == {
                "POST /api/v1/runs/{run_id}/cancel",
                "POST /api/v1/deployments/{name}/rollback",
                "POST /api/v1/deployments/{name}/down",
                "POST /api/v1/deployments",  # an update on the copy would roll the demo's replicas (see the test above)
                # uploads: tests/api/test_uploads.py sends real files (checked against this document by the server)
                "POST /api/v1/datasets/{name}/versions",
                "POST /api/v1/runs",
                # a drift check on the copy would fire the demo's trigger and roll the replicas it shares
                # (tests/monitoring/test_loop.py runs one through the remote CLI)
                "POST /api/v1/monitoring/{name}/run",
            }
        )
        # and the answers are still the CLI's --json
        run_id = ids["run_id"][0]
        assert client.get(f"/api/v1/runs/{run_id}").json() == _cli(ws, "runs", "show", run_id)
        assert client.get("/api/v1/models/malignancy").json() == _cli(ws, "models", "show", "malignancy")
        assert client.get("/api/v1/monitoring").json() == _cli(ws, "monitor", "status")
        assert client.get("/api/v1/alerts").json() == _cli(ws, "monitor", "alerts")
        assert client.get("/api/v1/triggers").json() == _cli(ws, "triggers", "ls") != []
    finally:
        client.close()
        stop(proc)


def test_a_bug_is_answered_500_in_the_apis_shape_without_its_details(tmp_path: Path) -> None:
    import asyncio

    from archipel.api import create_app
    from archipel.db import connect
    from archipel.services.init import init_workspace

    ws = init_workspace(tmp_path / "ws", demo=True)
    app = create_app(ws, connect(ws.db_url))

    @app.get("/api/v1/boom")
    def boom() -> None:
        raise RuntimeError("a secret detail")

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.get("/api/v1/boom")

    answer = asyncio.run(get())
    assert answer.status_code == 500 and answer.json()["kind"] == "InternalError"
    assert "secret" not in answer.text


def test_a_deployment_started_and_stopped_through_the_control_plane(server: Server, tmp_path: Path) -> None:
    """`archipel deploy FILE` and `deployments down` against ARCHIPEL_URL: the spec read (and checked) here, the
    replicas started by the control plane, answering; a deploy token is needed."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from archipel.data.samples import LABEL, MEAN_FEATURES
    from archipel.db import connect
    from archipel.registry.convert import convert
    from archipel.services.data import read_dataset
    from archipel.services.models import promote, register_version

    features = list(MEAN_FEATURES)
    engine = connect(server.ws.db_url)
    table = read_dataset(server.ws, engine, "patients-eu")
    rows = __import__("numpy").column_stack([table.column(f).to_numpy() for f in features]).astype("float32")
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(rows, table.column(LABEL).to_numpy())
    version = register_version(server.ws, engine, "remote", convert(model, rows[:32], feature_names=features),
                               site="onprem-frankfurt", datasets=["patients-eu"])  # fmt: skip
    promote(server.ws, engine, "remote", version.version, gates=[])
    engine.dispose()
    spec = tmp_path / "deployment.yaml"
    spec.write_text("name: remote\nmodel: remote@production\nsites: [onprem-frankfurt]\nsample_rate: 0\n")
    assert "needs deploy" in _remote(server, "deploy", str(spec)).stderr  # a read token may not
    spec.with_name("typo.yaml").write_text("name: remote\nmodle: remote@production\n")
    typo = _remote(server, "deploy", str(spec.with_name("typo.yaml")), token="deploy")
    assert (
        typo.returncode != 0 and "typo.yaml:2" in typo.stderr
    )  # checked here, with its line, before sending
    started = _remote(server, "deploy", str(spec), "--json", token="deploy")
    assert started.returncode == 0, started.stderr
    view = json.loads(started.stdout)
    try:
        assert view["state"] == "ready" and [r["site"] for r in view["replicas"]] == ["onprem-frankfurt"]
        ready = httpx.get(view["replicas"][0]["url"] + "/v2/health/ready", timeout=10)
        assert ready.status_code == 200
    finally:
        stopped = _remote(server, "deployments", "down", "remote", token="deploy")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(_remote(server, "deployments", "status", "remote", "--json").stdout)["state"] == "down"
