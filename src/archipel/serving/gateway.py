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
   then fewest requests in flight, then the lowest latency (an exponentially weighted mean of its answers' and
   health checks' times, so a replica that only looks slow is still probed every health interval);
4. forwards with a per-try timeout; a connection error, timeout or 5xx is retried on another allowed replica (at
   most ``retries`` more, jittered backoff), since infer is idempotent.

Health: every ``health_interval_s`` each replica's ``/v2/health/ready`` is checked (``health_timeout_s``); a
failed check takes it out of rotation at once. Passive outlier ejection in Envoy's spirit: ``eject_after``
consecutive failures (default 5) eject a replica for ``base_ejection_s`` × times ejected (default 30 s); it returns
once that time has passed and its health check succeeds. So a dead replica stops receiving traffic within one
health interval plus one timeout, and no request fails meanwhile (retries go elsewhere). The routing table
(deployments, replicas, model versions) is re-read from the metadata store every ``refresh_s``, so several
gateways can run side by side; ejections, re-admissions and residency refusals are audited (not every request).

The request path is callbacks on :mod:`archipel.serving.http1` (no coroutine, no ASGI cycle per request): a
cached token, a cached residency decision, a pick and one write upstream; a replica that answers in time costs
the gateway a few Python calls. Verifying a token not seen in the last ``token_cache_s`` goes to the metadata store
off the event loop. Replicas get ``X-Archipel-Replica-Secret`` when the gateway has one (``ARCHIPEL_REPLICA_SECRET``),
so replicas bound beyond loopback take traffic from gateways only.

Fast lane: when this module runs compiled (:mod:`archipel.serving._native`, built by ``make``), the common request
(a whole GET or POST to ``/v2/models/...`` with a cached token and a decided route) is parsed, routed and forwarded
in C by ``_native/fastlane.pyx``, and the replicas' plain answers are passed back in C; anything else (another
route, a token to verify, an error to retry, a chunked body) takes the Python path above, which decides the same.
``archipel_gateway_fast_lane_requests_total`` on ``/metrics`` counts both lanes. In ``benchmarks/serving.py`` this
brings the gateway's CPU a request below nginx's on the same traffic.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from sqlalchemy import Engine, select

from archipel.db.engine import session_scope
from archipel.db.orm import DeploymentRow, ReplicaRow
from archipel.errors import Forbidden, Unauthorized
from archipel.policy.audit import AuditLog
from archipel.policy.engine import Place, Subject, evaluate
from archipel.policy.jurisdiction import within
from archipel.services.tokens import Token, verify_token
from archipel.workspace import Workspace

from .http1 import JSON, Request, ServerConnection, UpstreamPool, serve  # relative: see _native

__all__ = ["Gateway", "GatewayConfig", "run_gateway"]

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
    replica_secret: str | None = None


class _Replica:
    """A running replica as the gateway sees it: where it is, and what its answers and health checks showed."""

    def __init__(
        self, id: int, deployment: str, site: str, jurisdiction: str, url: str, version: int = 0
    ) -> None:
        self.id, self.deployment, self.site, self.jurisdiction, self.url = (
            id,
            deployment,
            site,
            jurisdiction,
            url,
        )
        self.version = version
        self.in_flight = self.failures = self.ejections = self.served = 0
        self.ejected_until = 0.0
        self.latency_s = 0.0
        """Exponentially weighted mean of its answers' times (infer and health checks), weight 0.2 to the newest."""
        self.healthy = True
        self._pool: UpstreamPool | None = None
        self.site_header = b"x-archipel-site: %s\r\n" % site.encode()
        self.answered: Any = None  # the fast lane's reader of its answers (see _native/fastlane.pyx)

    def usable(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until

    def pool(self) -> UpstreamPool:
        if self._pool is None:
            where = urlsplit(self.url)
            self._pool = UpstreamPool(where.hostname or "127.0.0.1", where.port or 80, answered=self.answered)
        return self._pool


class _Deployment:
    def __init__(self, name: str, model: str, version: int, prefer_local: bool, subjects: list[Subject],
                 canary_version: int | None = None, canary_weight: float = 0.0) -> None:  # fmt: skip
        self.name, self.model, self.version, self.prefer_local = name, model, version, prefer_local
        self.subjects = subjects
        self.replicas: list[_Replica] = []
        self.canary_version, self.canary_weight = canary_version, canary_weight


class _Route:
    """A decision for requests with the same method, path, token and origin: refuse (``status``, ``body``), or
    forward to ``allowed`` with ``prefix`` (the request line and fixed headers); ``/metrics`` is rendered each time."""

    def __init__(self, path: str, counted: str | None = None, *, status: int = 0, body: bytes = b"",
                 headers: bytes = JSON, deployment: _Deployment | None = None, allowed: list[_Replica] | None = None,
                 origin: str | None = None, prefix: bytes = b"", cacheable: bool = True) -> None:  # fmt: skip
        self.path, self.counted = path, counted  # counted: the deployment whose answers this counts
        self.status, self.body, self.headers, self.cacheable = status, body, headers, cacheable
        self.deployment, self.allowed = deployment, allowed if allowed is not None else []
        self.origin, self.prefix = origin, prefix


class Gateway:
    """The routing state and the request handler; ``start()`` begins the refresh and health loops, and
    :func:`run_gateway` serves it."""

    def __init__(self, workspace: Workspace, engine: Engine, config: GatewayConfig | None = None) -> None:
        self.workspace, self.engine = workspace, engine
        self.config = config or GatewayConfig()
        self.deployments: dict[str, _Deployment] = {}
        self.replicas: dict[int, _Replica] = {}
        self.tokens: dict[bytes, tuple[float, Token | None]] = {}
        self._verifying: dict[bytes, list[tuple[ServerConnection, Request]]] = {}
        self.answers: dict[tuple[str, int], int] = {}  # (deployment, status) -> count, for /metrics
        self._decisions: dict[tuple[str, int, str, str | None], bool] = {}
        self._allowed_cache: dict[tuple[str, str | None, tuple[str, ...]], list[_Replica]] = {}
        self._routes: dict[tuple[str, str, bytes | None, bytes | None], _Route] = {}
        self.monitoring: tuple[
            dict[tuple[str, str], tuple[str, float | None]], dict[tuple[str, str], int]
        ] = ({}, {})
        self._tasks: list[asyncio.Task[None]] = []
        self._audited: dict[tuple[str, str], float] = {}
        secret = self.config.replica_secret
        self._secret = b"x-archipel-replica-secret: %s\r\n" % secret.encode() if secret else b""
        self.loaded = False
        self.fast: Any = None  # the fast lane, when this is the compiled twin (see _native)
        self._answered: Any = None  # and its reader of the replicas' answers
        self._read: Any = None  # the deployments and replicas as last read (see _read_table)
        self._metrics_asked = False
        if __name__ == "archipel.serving._native.gateway" and not os.environ.get("ARCHIPEL_NO_FAST_LANE"):
            from archipel.serving._native.fastlane import FastLane, answered

            self.fast = FastLane(self, min(self.config.refresh_s, self.config.token_cache_s / 2))
            self._answered = answered

    # -- background loops ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh()
        loops = (self._refresh_loop(), self._health_loop(), self._expire_loop())
        self._tasks = [asyncio.create_task(loop) for loop in loops]
        # what is loaded by now (modules, the ORM, the routing table) lives as long as the process: out of the
        # cyclic collector's sight, so its full collections do not walk it again and again under load
        gc.freeze()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for replica in self.replicas.values():
            if replica._pool is not None:
                replica._pool.close()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_s)
            try:
                await self.refresh()
            except Exception:  # the store may be briefly unavailable: keep serving the last table
                log.exception("refreshing the routing table failed")

    async def refresh(self) -> None:
        table = await asyncio.to_thread(self._read_table)
        if table is None:  # nothing changed; the routes are still decided again (they hold verified tokens)
            self._routes = {}
            return
        replicas: dict[int, _Replica] = {}
        for deployment in table.values():
            kept = []
            for replica in deployment.replicas:
                replica.answered = self._answered
                known = self.replicas.get(replica.id)
                kept.append(known if known is not None else replica)
                replicas[replica.id] = kept[-1]
            deployment.replicas = kept
        for gone in self.replicas.keys() - replicas.keys():
            if self.replicas[gone]._pool is not None:
                self.replicas[gone].pool().close()
        self.deployments, self.replicas, self.loaded = table, replicas, True
        self._allowed_cache, self._routes = {}, {}
        if self.fast is not None:
            self.fast.clear()

    def _read_table(self) -> dict[str, _Deployment] | None:
        """The routing table from the metadata store; None if the deployments and replicas are as last read."""
        from archipel.services.models import get_version
        from archipel.services.monitoring import gauges

        table: dict[str, _Deployment] = {}
        with session_scope(self.engine) as session:
            rows = list(session.scalars(select(DeploymentRow).where(DeploymentRow.state != "down")))
            replicas = list(session.scalars(select(ReplicaRow).where(ReplicaRow.state == "running")))
            read = (
                [(r.name, r.model, r.version, r.updated_at, orjson.dumps(r.spec, option=orjson.OPT_SORT_KEYS))
                 for r in rows],
                [(r.id, r.deployment, r.site, r.jurisdiction, r.url, r.version) for r in replicas],
            )  # fmt: skip
        if (
            self._metrics_asked or not self.loaded
        ):  # the latest drift verdicts and alert counts, for /metrics:
            self._metrics_asked = (
                False  # read when someone looks (a scrape sees them as of the refresh before)
            )
            self.monitoring = gauges(self.engine)
        if read == self._read:
            return None
        self._read = read
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

    async def _expire_loop(self) -> None:
        """Ten times a second: a request past its per-try timeout fails (and is retried elsewhere)."""
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for replica in self.replicas.values():
                if replica._pool is not None:
                    replica._pool.expire(now)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.gather(
                *(self._check(r) for r in list(self.replicas.values())), return_exceptions=True
            )
            await asyncio.sleep(self.config.health_interval_s)

    async def _check(self, replica: _Replica) -> None:
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        sent = time.monotonic()

        def done(status: int, head: bytes, body: bytes) -> None:
            replica.latency_s += 0.2 * (
                time.monotonic() - sent - replica.latency_s
            )  # keeps an idle replica known
            answer.set_result(status == 200)

        def failed(reason: str) -> None:
            answer.set_result(False)

        replica.pool().request(
            b"GET /v2/health/ready HTTP/1.1\r\nhost: replica\r\n\r\n",
            self.config.health_timeout_s,
            done,
            failed,
        )
        ok = await answer
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

    def handle(self, conn: ServerConnection, request: Request) -> None:
        """Answer ``request`` on ``conn`` (see the module docstring), now or once its token is verified."""
        path = request.path
        if path == "/v2/health/live":
            return conn.respond(request, 200, b'{"live":true}')
        if path == "/v2/health/ready":
            return conn.respond(
                request, 200 if self.loaded else 503, b'{"ready":%s}' % (b"true" if self.loaded else b"false")
            )
        header = request.headers.get(b"authorization", b"")
        cached = self.tokens.get(header)
        if cached is not None:
            age = time.monotonic() - cached[0]
            if age < self.config.token_cache_s:
                if age > self.config.token_cache_s / 2 and header not in self._verifying:  # refresh ahead
                    self._verifying[header] = []
                    asyncio.get_running_loop().create_task(self._verify(header))
                return self._route(conn, request, cached[1])
        if header[:7].lower() != b"bearer ":
            return self._route(conn, request, None)
        waiting = self._verifying.get(header)
        if waiting is not None:  # one look-up in the store per token, however many requests wait for it
            waiting.append((conn, request))
            return
        self._verifying[header] = [(conn, request)]
        asyncio.get_running_loop().create_task(self._verify(header))

    async def _verify(self, header: bytes) -> None:
        try:
            token: Token | None = await asyncio.to_thread(
                verify_token, self.engine, header[7:].strip().decode("latin-1")
            )
        except Unauthorized:
            token = None
        except (
            Exception
        ):  # the store is unreachable: a token verified lately still serves, for twice its cache time
            log.exception("verifying a token failed")
            known = self.tokens.get(header)
            fresh = known is not None and time.monotonic() - known[0] < 2 * self.config.token_cache_s
            for conn, request in self._verifying.pop(header, []):
                if fresh and known is not None and known[1] is not None:
                    self._route(conn, request, known[1])
                else:
                    conn.respond(
                        request, 503, b'{"error":"tokens cannot be verified now; try again shortly"}'
                    )
            return
        if len(self.tokens) > 10_000:
            self.tokens.clear()
        self.tokens[header] = (time.monotonic(), token)  # refusals too, so a bad token cannot flood the store
        for conn, request in self._verifying.pop(header, []):
            self._route(conn, request, token)

    def _route(self, conn: ServerConnection, request: Request, token: Token | None) -> None:
        headers = request.headers
        key = (request.method, request.path, headers.get(b"authorization"), headers.get(b"x-archipel-origin"))
        route = self._routes.get(key)
        if route is None:
            route = self._decide(request, token)
            if route.cacheable:
                if len(self._routes) > 10_000:
                    self._routes.clear()
                self._routes[key] = route
        if route.status:
            return self._answer(conn, request, route.counted, route.status, route.body, route.headers)
        if route.deployment is None:  # /metrics
            return conn.respond(request, 200, self._metrics(), b"content-type: text/plain; version=0.0.4\r\n")
        passed = b"".join([b"%s: %s\r\n" % (k, headers[k]) for k in _PASS if k in headers])
        data = b"%scontent-length: %d\r\n%s\r\n%s" % (route.prefix, len(request.body), passed, request.body)
        self._try(_Call(self, conn, request, route.deployment, route.allowed, route.origin, data))

    def fast_route(
        self, method: str, path: str, authorization: bytes | None, origin: bytes | None
    ) -> _Route | bool:
        """For the fast lane: the route of requests like this if it forwards them, with a token verified less than
        half its cache time ago (the lane forgets routes at least that often, so it never serves a token past its
        cache time). ``False``: requests like this take the Python path until the lane next forgets (a refusal, a
        route that is not a replica's); ``True``: this one does (its token is being looked up, or is due again: the
        look-up starts here, as :meth:`handle` starts it)."""
        header = authorization or b""
        cached = self.tokens.get(header)
        if cached is None:
            return True
        age = time.monotonic() - cached[0]
        if age > self.config.token_cache_s / 2:
            if age < self.config.token_cache_s and header not in self._verifying:  # refresh ahead
                self._verifying[header] = []
                asyncio.get_running_loop().create_task(self._verify(header))
            return True
        if cached[1] is None:
            return False
        key = (method, path, authorization, origin)
        route = self._routes.get(key)
        if route is None:
            headers = {b"authorization": authorization} if authorization is not None else {}
            if origin is not None:
                headers[b"x-archipel-origin"] = origin
            route = self._decide(Request(method, path, headers, b"", True), cached[1])
            if not route.cacheable:
                return False
            self._routes[key] = route
        return route if route.deployment is not None and not route.status else False

    def _decide(self, request: Request, token: Token | None) -> _Route:
        """What to do with requests like this one (method, path, token, origin): refuse them, or forward them to
        these replicas. Kept until the routing table is next read (so at most ``refresh_s``)."""
        path, method = request.path, request.method
        if token is None:
            return _Route(path, status=401, body=b'{"error":"a valid bearer token is required"}',
                          headers=JSON + b"www-authenticate: Bearer\r\n", cacheable=False)  # fmt: skip
        name = None
        if path.startswith("/v2/models/"):
            name = path.split("/", 4)[3]
        elif path != "/metrics" and path != "/v2":
            return _Route(path, status=404, body=orjson.dumps({"error": f"no route {path}"}))
        try:
            token.require(
                "infer" if name is not None and path.endswith("/infer") else "read", deployment=name
            )
        except Forbidden as exc:
            return _Route(path, status=403, body=orjson.dumps({"error": str(exc)}))
        if name is None:
            if path == "/metrics":
                return _Route(path)
            return _Route(path, status=200, body=b'{"name":"archipel-gateway","version":"2","extensions":[]}')
        deployment = self.deployments.get(name) or next(
            (d for d in self.deployments.values() if d.model == name), None
        )
        if deployment is None:
            return _Route(
                path, name, status=404, body=orjson.dumps({"error": f"no deployment serves {name}"})
            )
        origin_header = request.headers.get(b"x-archipel-origin")
        origin = origin_header.decode("latin-1").upper() if origin_header else None
        if origin is not None and origin not in token.origins:
            self._refusal(token, origin)
            message = {"error": f"token {token.id} may not assert origin {origin}"}
            return _Route(path, deployment.name, status=403, body=orjson.dumps(message))
        # residency governs answers computed from the model; its metadata may come from any replica
        allowed = self._allowed(deployment, token, origin) if method == "POST" else deployment.replicas
        if not allowed:
            message = {"error": f"no replica of {deployment.name} may serve this origin now"}
            return _Route(path, deployment.name, status=503, body=orjson.dumps(message))
        target = f"/v2/models/{deployment.model}{path[11 + len(name) :]}"
        prefix = f"{method} {target} HTTP/1.1\r\nhost: replica\r\n".encode() + self._secret
        return _Route(
            path, deployment.name, deployment=deployment, allowed=allowed, origin=origin, prefix=prefix
        )

    def _answer(self, conn: ServerConnection, request: Request, deployment: str | None, status: int, body: bytes,
                headers: bytes = JSON) -> None:  # fmt: skip
        if deployment is not None:
            key = (deployment, status)
            self.answers[key] = self.answers.get(key, 0) + 1
        conn.respond(request, status, body, headers)

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
        key = (deployment.name, origin, token.origins)
        found = self._allowed_cache.get(key)
        if found is None:
            origins: list[str | None] = [origin] if origin is not None else (list(token.origins) or [None])
            found = [r for r in deployment.replicas if all(self._servable(deployment, r, o) for o in origins)]
            self._allowed_cache[key] = found
        return found

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
              tried: tuple[int, ...]) -> _Replica | None:  # fmt: skip
        now = time.monotonic()
        if len(candidates) == 1 and deployment.canary_version is None:
            only = candidates[0]
            return only if only.id not in tried and only.healthy and now >= only.ejected_until else None
        usable = [r for r in candidates if r.id not in tried and r.usable(now)]
        if deployment.canary_version is not None:  # a weighted coin picks the canary or the stable version
            canary = random.random() < deployment.canary_weight
            chosen = [r for r in usable if (r.version == deployment.canary_version) == canary]
            usable = chosen or usable  # one side has no usable replica: the other serves
        if len(usable) < 2:
            return usable[0] if usable else None
        if deployment.prefer_local and origin is not None:
            local = [r for r in usable if within(r.jurisdiction, origin)]
            usable = local or usable
        return min(usable, key=lambda r: (r.in_flight, r.latency_s, random.random()))

    def _try(self, call: _Call) -> None:
        replica = self._pick(call.deployment, call.allowed, call.origin, call.tried)
        if replica is None:
            return call.give_up()
        call.tried += (replica.id,)
        call.replica = replica
        call.sent = time.monotonic()
        call.deadline = call.sent + self.config.try_timeout_s
        replica.in_flight += 1
        replica.pool().submit(call)

    def _failed(self, replica: _Replica) -> None:
        replica.failures += 1
        if replica.failures >= self.config.eject_after and replica.ejected_until == 0.0:
            replica.ejections += 1
            replica.ejected_until = time.monotonic() + self.config.base_ejection_s * replica.ejections
            log.warning("ejected replica %s at %s for %.0f s", replica.id, replica.site,
                        self.config.base_ejection_s * replica.ejections)  # fmt: skip
            self._audit("gateway.eject", replica)

    def _metrics(self) -> bytes:
        self._metrics_asked = True
        lines = ["# TYPE archipel_gateway_replica_requests_total counter",
                 "# TYPE archipel_gateway_replica_ejected gauge",
                 "# TYPE archipel_gateway_replica_in_flight gauge",
                 "# TYPE archipel_gateway_replica_latency_seconds gauge"]  # fmt: skip
        now = time.monotonic()
        for r in self.replicas.values():
            labels = f'deployment="{r.deployment}",site="{r.site}",replica="{r.id}"'
            lines.append(f"archipel_gateway_replica_requests_total{{{labels}}} {r.served}")
            lines.append(f"archipel_gateway_replica_ejected{{{labels}}} {int(not r.usable(now))}")
            lines.append(f"archipel_gateway_replica_in_flight{{{labels}}} {r.in_flight}")
            lines.append(f"archipel_gateway_replica_latency_seconds{{{labels}}} {r.latency_s:.6f}")
        if self.fast is not None:  # requests the compiled lane took, and those it left to the Python path
            lines.append("# TYPE archipel_gateway_fast_lane_requests_total counter")
            lines.append(f'archipel_gateway_fast_lane_requests_total{{lane="fast"}} {self.fast.taken}')
            lines.append(f'archipel_gateway_fast_lane_requests_total{{lane="python"}} {self.fast.declined}')
        lines.append("# TYPE archipel_gateway_responses_total counter")
        for (deployment, status), count in sorted(self.answers.items()):
            lines.append(
                f'archipel_gateway_responses_total{{deployment="{deployment}",code="{status}"}} {count}'
            )
        drift, alerts = self.monitoring  # from the metadata store, as every gateway sees it
        lines += ["# TYPE archipel_drift_detected gauge", "# TYPE archipel_drift_share gauge"]
        for (deployment, site), (verdict, share) in sorted(drift.items()):
            labels = f'deployment="{deployment}",site="{site}"'
            lines.append(f"archipel_drift_detected{{{labels}}} {int(verdict == 'drift')}")
            if share is not None:
                lines.append(f"archipel_drift_share{{{labels}}} {share}")
        lines.append("# TYPE archipel_alerts_total counter")
        for (deployment, kind), count in sorted(alerts.items()):
            lines.append(f'archipel_alerts_total{{deployment="{deployment}",kind="{kind}"}} {count}')
        return ("\n".join(lines) + "\n").encode()


class _Call:
    """One infer or metadata request on its way to a replica: the tries so far and where the answer goes; it is
    its own upstream exchange (``data``, ``deadline``, ``done``, ``failed``: :meth:`UpstreamPool.submit`)."""

    def __init__(self, gateway: Gateway, conn: ServerConnection, request: Request, deployment: _Deployment,
                 allowed: list[_Replica], origin: str | None, data: bytes) -> None:  # fmt: skip
        self.gateway, self.conn, self.request, self.deployment = gateway, conn, request, deployment
        self.allowed, self.origin, self.data = allowed, origin, data
        self.tried: tuple[int, ...] = ()
        self.attempt, self.error, self.deadline, self.sent = 0, "no replica is ready", 0.0, 0.0
        self.replica: _Replica | None = None

    def done(self, status: int, head: bytes, body: bytes) -> None:
        replica = self.replica
        assert replica is not None
        replica.in_flight -= 1
        if status >= 500:
            return self.failed(f"HTTP {status}", counted=False)
        if status == 401:  # only a gateway without the replicas' secret hears this: not the caller's fault
            return self.failed(
                "it refused this gateway (is ARCHIPEL_REPLICA_SECRET the deployment's?)", counted=False
            )
        replica.failures = 0
        replica.served += 1
        replica.latency_s += 0.2 * (time.monotonic() - self.sent - replica.latency_s)
        key = (self.deployment.name, status)
        answers = self.gateway.answers
        answers[key] = answers.get(key, 0) + 1
        self.conn.respond_head(self.request, head + replica.site_header, body)

    def failed(self, reason: str, counted: bool = True) -> None:
        replica, gateway = self.replica, self.gateway
        assert replica is not None
        if counted:
            replica.in_flight -= 1
        self.error = f"replica at {replica.site}: {reason}"
        gateway._failed(replica)
        self.attempt += 1
        if self.attempt > gateway.config.retries or self.conn.closed:
            return self.give_up()
        backoff = random.uniform(0.005, 0.02) * self.attempt
        asyncio.get_running_loop().call_later(backoff, gateway._try, self)

    def give_up(self) -> None:
        request_id = self.request.headers.get(b"x-request-id", b"-").decode("latin-1")
        log.warning("request %s: 503 (%s)", request_id, self.error)
        message = {"error": f"no allowed replica could serve the request ({self.error})"}
        self.gateway._answer(self.conn, self.request, self.deployment.name, 503, orjson.dumps(message))


def run_gateway(gateway: Gateway, sock: socket.socket) -> None:
    """Serve ``gateway`` on the listening ``sock`` until SIGTERM or SIGINT (requests in progress are answered)."""
    import uvloop

    uvloop.run(serve(gateway.handle, sock, max_body=gateway.config.max_body_bytes, on_start=gateway.start,
                     on_stop=gateway.stop, fast=gateway.fast))  # fmt: skip


def secret_from_env() -> str | None:
    """The replicas' shared secret from ``ARCHIPEL_REPLICA_SECRET`` (what ``deploy`` gave them), if set."""
    return os.environ.get("ARCHIPEL_REPLICA_SECRET") or None


COMPILED = False
"""Whether this module's compiled twin (:mod:`archipel.serving._native`), with its fast lane, is what runs."""

if __name__ == "archipel.serving.gateway":  # (the twin itself is archipel.serving._native.gateway)
    from archipel.serving._native import load as _load

    _twin = _load("gateway")
    if _twin is not None:
        globals().update({k: v for k, v in vars(_twin).items() if not k.startswith("__")})
        COMPILED = True
