"""The floor of any proxy on uvloop, for ``serving.py``'s gateway part: each client connection gets its own
connection to the target and bytes are copied both ways as they come (no HTTP, no auth, no routing, no pooling).
Whatever a Python proxy on this event loop does per request, it costs at least this.

    python benchmarks/relay.py TARGET_PORT        # prints LISTENING <port>, runs until killed
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

import uvloop


class _Up(asyncio.Protocol):
    def __init__(self, down: _Down) -> None:
        self.down = down

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.down.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.down.transport.close()


class _Down(asyncio.Protocol):
    def __init__(self, port: int) -> None:
        self.port, self.up, self.early = port, None, []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.up = await loop.create_connection(lambda: _Up(self), "127.0.0.1", self.port)
        for data in self.early:
            self.up.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.up is None:
            self.early.append(data)
        else:
            self.up.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.transport.close()


async def _main(port: int) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    print("LISTENING", sock.getsockname()[1], flush=True)
    await asyncio.get_running_loop().create_server(lambda: _Down(port), sock=sock)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(_main(int(sys.argv[1])))
