"""What the model server and the gateway share at the ASGI level."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Receive", "Send", "read_body", "run_uvicorn"]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes | None:
    """The request body, or None when it is larger than ``limit`` bytes: refused from its Content-Length before
    anything is read, else as soon as the bytes read pass the limit (never buffered whole)."""
    declared = headers.get(b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def run_uvicorn(app: Any, sock: Any) -> None:
    """Serve ``app`` on an already bound socket the way every archipel server runs: uvloop, httptools, no access
    log, and none of the per-request work a loopback replica or a gateway does not need (proxy headers, Server and
    Date headers)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        lifespan="on",
    )
    uvicorn.Server(config).run(sockets=[sock])
