"""Token verification in the gateway, in process over real sockets: one look-up in the metadata store per token
however many requests wait for it, refreshed ahead of expiry, and a revocation felt within the cache time."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

CACHE_S = 0.6


@pytest.fixture(params=[CACHE_S])
def gateway(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Any, Any, list[float]]]:
    """A gateway on a real socket whose token cache lasts ``request.param`` seconds."""
    import uvloop

    from archipel.db import connect
    from archipel.services.apply import apply_plan, plan_apply
    from archipel.services.init import init_workspace
    from archipel.serving.gateway import Gateway, GatewayConfig
    from archipel.serving.http1 import HTTPServer, listen

    ws = init_workspace(tmp_path / "ws", demo=True)
    engine = connect(ws.db_url)
    apply_plan(ws, engine, plan_apply(ws, engine))
    looked_up: list[float] = []
    module = sys.modules[
        Gateway.__module__
    ]  # the compiled twin's module when it runs (archipel.serving._native)
    real = module.verify_token

    def counted(engine: Any, presented: str | None) -> Any:  # the real look-up, counted and a little slow
        looked_up.append(time.monotonic())
        time.sleep(0.05)
        return real(engine, presented)

    monkeypatch.setattr(module, "verify_token", counted)
    app = Gateway(ws, engine, GatewayConfig(token_cache_s=request.param))
    sock = listen("127.0.0.1", 0)
    loop = uvloop.new_event_loop()
    ready, stop = threading.Event(), asyncio.Event()

    async def main() -> None:
        await app.start()
        server = HTTPServer(app.handle, max_body=1 << 20)
        await server.start(sock)
        ready.set()
        await stop.wait()
        await server.close()
        await app.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),))
    thread.start()
    assert ready.wait(30)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", ws, engine, looked_up
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    engine.dispose()


@pytest.mark.parametrize("gateway", [60.0], indirect=True)  # no refresh-ahead while the requests run
def test_concurrent_requests_with_a_new_token_look_it_up_once(
    gateway: tuple[str, Any, Any, list[float]],
) -> None:
    from archipel.services.tokens import create_token

    url, ws, engine, looked_up = gateway
    token = create_token(ws, engine, scope="read")[0]
    headers = {"Authorization": f"Bearer {token}"}

    def one(_: int) -> int:
        return httpx.get(f"{url}/v2", headers=headers, timeout=10).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(32)))
    assert codes == [200] * 32 and len(looked_up) == 1


def test_a_token_is_refreshed_ahead_and_a_revocation_is_felt_within_the_cache_time(
    gateway: tuple[str, Any, Any, list[float]],
) -> None:
    from archipel.services.tokens import create_token, revoke_token

    url, ws, engine, looked_up = gateway
    whole, token = create_token(ws, engine, scope="read")
    headers = {"Authorization": f"Bearer {whole}"}
    with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
        assert client.get("/v2").status_code == 200
        time.sleep(CACHE_S * 0.6)  # past half the cache time: answered at once, looked up again behind
        assert client.get("/v2").status_code == 200
        deadline = time.monotonic() + 5
        while len(looked_up) < 2 and time.monotonic() < deadline:  # the look-up behind runs on a thread
            time.sleep(0.01)
        assert len(looked_up) == 2
        revoke_token(ws, engine, token.id)
        revoked_at = time.monotonic()
        while client.get("/v2").status_code == 200:
            assert time.monotonic() - revoked_at < CACHE_S + 1.0, "the revoked token still works"
            time.sleep(0.02)
        answer = client.get("/v2")
        assert answer.status_code == 401 and "www-authenticate" in answer.headers
