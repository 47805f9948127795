"""The gateway: one authenticated front door over every replica of every deployment, at every site.

Same OIP v2 routes as a model server. For each request it:

1. authenticates the bearer token (401 without one, 403 with a scope below the route's: ``read`` for metadata and
   ``/metrics``, ``infer`` for infer; health is public); verified tokens are cached ``token_cache_s`` (so a
   revocation takes effect within that time);
2. decides the allowed replicas by residency: the request's origin (``X-Archipel-Origin``, which must be one the
   token may assert, else 403; without the header, every origin the token allows must be servable there, and a
   token without origins is served only where the policy needs no origin) against the model's training data, by
   the policy engine's ``serve`` action; no allowed replica → **503, fail closed**, never a forbidden site;
3. picks among ready, non-ejected allowed replicas: same jurisdiction as the origin first (``prefer_local``),
   then fewest requests in flight;
4. forwards with a per-try timeout; a connection error, timeout or 5xx is retried on another allowed replica (at
   most ``retries`` more, jittered backoff), since infer is idempotent.

Health: every ``health_interval_s`` each replica's ``/v2/health/ready`` is checked (``health_timeout_s``); a
failed check takes it out of rotation at once. Passive outlier ejection in Envoy's spirit: ``eject_after``
consecutive failures (default 5) eject a replica for ``base_ejection_s`` × times ejected (default 30 s); it returns
once that time has passed and its health check succeeds. So a dead replica stops receiving traffic within one
health interval plus one timeout, and no request fails meanwhile (retries go elsewhere). The routing table
(deployments, replicas, model versions) is re-read from the metadata store every ``refresh_s``, so several
gateways can run side by side; ejections, re-admissions and residency refusals are audited (not every request).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from sqlalchemy import Engine, select

from archipel.db.engine import session_scope
from archipel.db.orm import DeploymentRow, ReplicaRow
from archipel.errors import Forbidden, Unauthorized
from archipel.policy.audit import AuditLog
from archipel.policy.engine import Place, Subject, evaluate
from archipel.policy.jurisdiction import within
from archipel.services.tokens import Token, verify_token
from archipel.serving.asgi import Receive, Send, read_body
from archipel.workspace import Workspace

__all__ = ["Gateway", "GatewayConfig"]

log = logging.getLogger("archipel.gateway")
_PASS = (b"x-request-id", b"traceparent", b"content-type")


@dataclass
class GatewayConfig:
    refresh_s: float = 1.0
    health_interval_s: float = 1.0
    health_timeout_s: float = 0.5
    eject_after: int = 5
    base_ejection_s: float = 30.0
    try_timeout_s: float = 5.0
    retries: int = 2
    token_cache_s: float = 5.0
    max_body_bytes: int = 8 * 2**20


@dataclass
class _Replica:
    id: int
    deployment: str
    site: str
    jurisdiction: str
    url: str
    version: int = 0
    in_flight: int = 0
    failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    healthy: bool = True
    served: int = 0

    def usable(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until


@dataclass
class _Deployment:
    name: str
    model: str
    version: int
    prefer_local: bool
    subjects: list[Subject]
    replicas: list[_Replica] = field(default_factory=list)
    canary_version: int | None = None
    canary_weight: float = 0.0


class Gateway:
    """The ASGI application; ``start()`` (or the lifespan) begins the refresh and health loops."""

    def __init__(self, workspace: Workspace, engine: Engine, config: GatewayConfig | None = None) -> None:
        self.workspace, self.engine = workspace, engine
        self.config = config or GatewayConfig()
        self.deployments: dict[str, _Deployment] = {}
        self.replicas: dict[int, _Replica] = {}
        self.tokens: dict[str, tuple[float, Token]] = {}
        self._decisions: dict[tuple[str, int, str, str | None], bool] = {}
        self._client: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._audited: dict[tuple[str, str], float] = {}
        self.loaded = False

    # -- background loops ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        # aiohttp's pool stays flat under load (httpx/httpcore's scans every connection per request: benchmarks/serving)
        connector = aiohttp.TCPConnector(
            limit=1024, limit_per_host=256, keepalive_timeout=30, ttl_dns_cache=None
        )
        self._client = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.config.try_timeout_s),
            auto_decompress=False,
        )
        await self.refresh()
        self._tasks = [asyncio.create_task(self._refresh_loop()), asyncio.create_task(self._health_loop())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._client is not None:
            await self._client.close()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_s)
            try:
                await self.refresh()
            except Exception:  # the store may be briefly unavailable: keep serving the last table
                log.exception("refreshing the routing table failed")

    async def refresh(self) -> None:
        table = await asyncio.to_thread(self._read_table)
        replicas: dict[int, _Replica] = {}
        for deployment in table.values():
            kept = []
            for replica in deployment.replicas:
                known = self.replicas.get(replica.id)
                kept.append(known if known is not None else replica)
                replicas[replica.id] = kept[-1]
            deployment.replicas = kept
        self.deployments, self.replicas, self.loaded = table, replicas, True

    def _read_table(self) -> dict[str, _Deployment]:
        from archipel.services.models import get_version

        table: dict[str, _Deployment] = {}
        with session_scope(self.engine) as session:
            rows = list(session.scalars(select(DeploymentRow).where(DeploymentRow.state != "down")))
            replicas = list(session.scalars(select(ReplicaRow).where(ReplicaRow.state == "running")))
        for row in rows:
            version = get_version(self.engine, f"{row.model}/{row.version}")
            subjects, canary_version, weight = version.subjects(), None, 0.0
            canary = row.spec.get("canary")
            if canary:  # the canary's training data governs its answers too
                other = get_version(self.engine, canary["model"])
                canary_version, weight = other.version, float(canary["weight"])
                subjects = subjects + other.subjects()
            table[row.name] = _Deployment(row.name, row.model, row.version, bool(row.spec.get("prefer_local", True)),
                                          subjects, canary_version=canary_version, canary_weight=weight)  # fmt: skip
        for r in replicas:
            if r.deployment in table:
                table[r.deployment].replicas.append(
                    _Replica(r.id, r.deployment, r.site, r.jurisdiction, r.url, version=r.version)
                )
        return table

    async def _health_loop(self) -> None:
        while True:
            await asyncio.gather(
                *(self._check(r) for r in list(self.replicas.values())), return_exceptions=True
            )
            await asyncio.sleep(self.config.health_interval_s)

    async def _check(self, replica: _Replica) -> None:
        assert self._client is not None
        try:
            timeout = aiohttp.ClientTimeout(total=self.config.health_timeout_s)
            async with self._client.get(f"{replica.url}/v2/health/ready", timeout=timeout) as response:
                ok = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok and not replica.healthy:
            log.info("replica %s at %s is healthy again", replica.id, replica.site)
        if not ok and replica.healthy:
            self._audit("gateway.unhealthy", replica)
        replica.healthy = ok
        if ok and replica.ejected_until and time.monotonic() >= replica.ejected_until:
            replica.ejected_until, replica.failures = 0.0, 0
            self._audit("gateway.readmit", replica)

    def _audit(self, action: str, replica: _Replica) -> None:
        def write() -> None:
            AuditLog(self.engine, self.workspace.state_dir).record(action=action, subject=replica.deployment,
                sites=[replica.site], outcome="done", reason=f"replica {replica.id} ({replica.url})")  # fmt: skip

        asyncio.get_running_loop().run_in_executor(None, write)

    # -- requests -----------------------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    await self.start()
                    await send({"type": "lifespan.startup.complete"})
            await self.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        headers = dict(scope["headers"])
        if path == "/v2/health/live":
            return await _json(send, 200, {"live": True})
        if path == "/v2/health/ready":
            return await _json(send, 200 if self.loaded else 503, {"ready": self.loaded})
        needed = "infer" if path.endswith("/infer") else "read"
        try:
            token = await self._token(headers.get(b"authorization", b"").decode("latin-1"))
            if not (path == "/metrics" or path == "/v2" or path.startswith("/v2/models/")):
                return await _json(send, 404, {"error": f"no route {path}"})
            name = path.split("/")[3] if path.startswith("/v2/models/") else None
            token.require(needed, deployment=name)
        except Unauthorized as exc:
            return await _json(send, 401, {"error": str(exc)}, [(b"www-authenticate", b"Bearer")])
        except Forbidden as exc:
            return await _json(send, 403, {"error": str(exc)})
        if path == "/metrics":
            return await self._metrics(send)
        if path == "/v2":
            return await _json(send, 200, {"name": "archipel-gateway", "version": "2", "extensions": []})
        assert name is not None
        deployment = self.deployments.get(name) or next(
            (d for d in self.deployments.values() if d.model == name), None
        )
        if deployment is None:
            return await _json(send, 404, {"error": f"no deployment serves {name}"})
        origin = headers.get(b"x-archipel-origin", b"").decode("latin-1").upper() or None
        if origin is not None and origin not in token.origins:
            self._refusal(token, origin)
            return await _json(send, 403, {"error": f"token {token.id} may not assert origin {origin}"})
        # residency governs answers computed from the model; its metadata may come from any replica
        allowed = self._allowed(deployment, token, origin) if method == "POST" else list(deployment.replicas)
        if not allowed:
            return await _json(
                send, 503, {"error": f"no replica of {deployment.name} may serve this origin now"}
            )
        body = b""
        if method == "POST":
            body = await read_body(receive, headers, self.config.max_body_bytes)
            if body is None:
                return await _json(send, 413, {"error": "the request body is too large"})
        suffix = path.split(f"/v2/models/{name}", 1)[1]
        forward = {k.decode(): v.decode("latin-1") for k, v in headers.items() if k in _PASS}
        await self._forward(send, deployment, allowed, origin, method, f"/v2/models/{deployment.model}{suffix}",
                            body, forward)  # fmt: skip

    async def _token(self, header: str) -> Token:
        presented = header[7:].strip() if header[:7].lower() == "bearer " else ""
        cached = self.tokens.get(presented)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.config.token_cache_s:
            return cached[1]
        token = await asyncio.to_thread(verify_token, self.engine, presented)
        if len(self.tokens) > 10_000:
            self.tokens.clear()
        self.tokens[presented] = (now, token)
        return token

    def _servable(self, deployment: _Deployment, replica: _Replica, origin: str | None) -> bool:
        key = (deployment.name, replica.id, replica.site, origin)
        found = self._decisions.get(key)
        if found is None:
            place = Place.of(replica.site, self.workspace.site(replica.site))
            found = all(evaluate("serve", s, place, origin, rules=self.workspace.spec.policies).allowed
                        for s in deployment.subjects)  # fmt: skip
            self._decisions[key] = found
        return found

    def _allowed(self, deployment: _Deployment, token: Token, origin: str | None) -> list[_Replica]:
        origins: list[str | None] = [origin] if origin is not None else (list(token.origins) or [None])
        return [r for r in deployment.replicas if all(self._servable(deployment, r, o) for o in origins)]

    def _refusal(self, token: Token, origin: str) -> None:
        key, now = (token.id, origin), time.monotonic()
        if now - self._audited.get(key, -1e9) < 60:
            return
        self._audited[key] = now

        def write() -> None:
            AuditLog(self.engine, self.workspace.state_dir).record(action="gateway.refuse", subject=token.id,
                outcome="refused", reason=f"origin {origin} not allowed for this token")  # fmt: skip

        asyncio.get_running_loop().run_in_executor(None, write)

    def _pick(self, deployment: _Deployment, candidates: list[_Replica], origin: str | None,
              tried: set[int]) -> _Replica | None:  # fmt: skip
        now = time.monotonic()
        usable = [r for r in candidates if r.id not in tried and r.usable(now)]
        if deployment.canary_version is not None:  # a weighted coin picks the canary or the stable version
            canary = random.random() < deployment.canary_weight
            chosen = [r for r in usable if (r.version == deployment.canary_version) == canary]
            usable = chosen or usable  # one side has no usable replica: the other serves
        if not usable:
            return None
        if deployment.prefer_local and origin is not None:
            local = [r for r in usable if within(r.jurisdiction, origin)]
            usable = local or usable
        return min(usable, key=lambda r: (r.in_flight, random.random()))

    async def _forward(self, send: Send, deployment: _Deployment, allowed: list[_Replica], origin: str | None,
                       method: str, path: str, body: bytes, headers: dict[str, str]) -> None:  # fmt: skip
        assert self._client is not None
        tried: set[int] = set()
        last_error = "no replica is ready"
        for attempt in range(self.config.retries + 1):
            replica = self._pick(deployment, allowed, origin, tried)
            if replica is None:
                break
            tried.add(replica.id)
            replica.in_flight += 1
            try:
                async with self._client.request(
                    method, replica.url + path, data=body or None, headers=headers
                ) as response:
                    status, content = response.status, await response.read()
                    content_type = response.headers.get("content-type", "application/json")
                    request_id = response.headers.get("x-request-id")
            except (aiohttp.ClientError, TimeoutError) as exc:
                last_error = f"replica at {replica.site}: {type(exc).__name__}"
                self._failed(replica)
            else:
                if status < 500:
                    replica.failures = 0
                    replica.served += 1
                    out = [(b"content-type", content_type.encode()), (b"x-archipel-site", replica.site.encode()),
                           (b"content-length", str(len(content)).encode())]  # fmt: skip
                    if request_id:
                        out.append((b"x-request-id", request_id.encode("latin-1")))
                    await send({"type": "http.response.start", "status": status, "headers": out})
                    await send({"type": "http.response.body", "body": content})
                    if log.isEnabledFor(logging.DEBUG):
                        log.debug("request %s -> %s at %s: %s", headers.get("x-request-id", "-"), replica.id,
                                  replica.site, status)  # fmt: skip
                    return
                last_error = f"replica at {replica.site}: HTTP {status}"
                self._failed(replica)
            finally:
                replica.in_flight -= 1
            await asyncio.sleep(random.uniform(0.005, 0.02) * (attempt + 1))
        log.warning("request %s: 503 (%s)", headers.get("x-request-id", "-"), last_error)
        await _json(send, 503, {"error": f"no allowed replica could serve the request ({last_error})"})

    def _failed(self, replica: _Replica) -> None:
        replica.failures += 1
        if replica.failures >= self.config.eject_after and replica.ejected_until == 0.0:
            replica.ejections += 1
            replica.ejected_until = time.monotonic() + self.config.base_ejection_s * replica.ejections
            log.warning("ejected replica %s at %s for %.0f s", replica.id, replica.site,
                        self.config.base_ejection_s * replica.ejections)  # fmt: skip
            self._audit("gateway.eject", replica)

    async def _metrics(self, send: Send) -> None:
        lines = ["# TYPE archipel_gateway_replica_requests_total counter"]
        for r in self.replicas.values():
            labels = f'deployment="{r.deployment}",site="{r.site}",replica="{r.id}"'
            lines.append(f"archipel_gateway_replica_requests_total{{{labels}}} {r.served}")
            lines.append(
                f"archipel_gateway_replica_ejected{{{labels}}} {int(not r.usable(time.monotonic()))}"
            )
        body = ("\n".join(lines) + "\n").encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": body})


async def _json(
    send: Send, status: int, payload: Any, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *(extra or [])]})  # fmt: skip
    await send({"type": "http.response.body", "body": orjson.dumps(payload)})
