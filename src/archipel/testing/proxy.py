"""A userspace TCP proxy that injects network faults between two endpoints (this kernel has no ``tc netem``).

Tests and benchmarks put a :class:`FaultProxy` in front of a real server so that the link behaves like a
cross-cloud one (latency, jitter, a bandwidth cap) or a failing one (resets, a black hole, a refused port,
a cut mid-transfer)::

    with FaultProxy(("127.0.0.1", s3_port), faults=Faults(latency_s=0.01)) as proxy:
        url = f"http://127.0.0.1:{proxy.port}"
        ...
        proxy.configure(mode="reset")  # returns once every connection has been reset

The proxy runs its own asyncio loop in a background thread, so synchronous code drives it. As a separate
process, for benchmarks (prints ``LISTENING <port>`` once ready, runs until SIGTERM or SIGINT)::

    python -m archipel.testing.proxy --target 127.0.0.1:9000 --latency-ms 10 --bandwidth-mbps 100

Link model, per connection and per direction: every chunk read is stamped ``arrival + latency (+ jitter)``
and written no earlier than that and never before an earlier chunk, then paced by a token bucket. Latency
is therefore paid once per round trip, not once per chunk. At most ``WINDOW_CHUNKS * READ_SIZE`` bytes are
held per direction (a TCP window of sorts; the proxy stops reading beyond it). The TCP handshake is not
delayed: the client's connect completes locally and only data pays latency.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import enum
import random
import signal
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

Mode = Literal["pass", "reset", "blackhole", "refuse"]
MODES: tuple[str, ...] = get_args(Mode)

READ_SIZE = 64 * 1024
"""The largest chunk the proxy reads, stamps and releases at once."""
WINDOW_CHUNKS = 128
"""Chunks held per direction before the proxy stops reading from the sender."""

_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and drops unsent data
_THREAD_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Faults:
    """What the link does to traffic; immutable, :meth:`FaultProxy.configure` swaps in a new one.

    - ``latency_s``: one-way delay added to each direction.
    - ``jitter_s``: an extra uniform ``0..jitter_s`` delay per chunk; ordering is preserved.
    - ``bandwidth_bps``: bits per second, per connection and per direction; None is unlimited.
    - ``mode``: ``"pass"``; ``"reset"`` (existing and new connections get a TCP RST); ``"blackhole"``
      (connections are accepted but nothing is forwarded or answered; what was held flows again on
      ``"pass"``, as TCP would retransmit it); ``"refuse"`` (the listener closes, so connects get
      ECONNREFUSED and existing connections are reset; leaving it re-opens the same port).
    - ``reset_after_bytes``: a connection is reset once this many bytes went target→client; the client
      receives at most that many.

    Raises ValueError on a negative delay or size, a non-positive bandwidth or an unknown mode.
    """

    latency_s: float = 0.0
    jitter_s: float = 0.0
    bandwidth_bps: float | None = None
    mode: Mode = "pass"
    reset_after_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.latency_s < 0 or self.jitter_s < 0:
            raise ValueError(f"latency_s and jitter_s must be >= 0, got {self.latency_s} and {self.jitter_s}")
        if self.bandwidth_bps is not None and self.bandwidth_bps <= 0:
            raise ValueError(f"bandwidth_bps must be > 0 or None, got {self.bandwidth_bps}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.reset_after_bytes is not None and self.reset_after_bytes < 0:
            raise ValueError(f"reset_after_bytes must be >= 0 or None, got {self.reset_after_bytes}")


class _Unset(enum.Enum):
    UNSET = enum.auto()


_UNSET = _Unset.UNSET


class _Cut(Exception):
    """Raised inside a connection's tasks to have it reset."""


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    task: asyncio.Task[None]
    upstream: asyncio.StreamWriter | None = None
    bytes_down: int = 0

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]

    def abort(self, *, rst: bool) -> None:
        """Close both sockets now, dropping unsent data; with ``rst`` the peers see ECONNRESET."""
        for writer in self.writers():
            sock = writer.transport.get_extra_info("socket")
            if rst and sock is not None:
                with contextlib.suppress(OSError):  # already closed
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            writer.transport.abort()


class FaultProxy:
    """A TCP proxy from ``listen_host:listen_port`` (0: any free port) to ``target``, with :class:`Faults`.

    Use it as a context manager or call :meth:`start` and :meth:`stop`; it runs once. :meth:`configure`
    may be called at any time from any thread except the proxy's own. ``listen_host`` must be an address,
    not a name (loopback by default). The counters are read-only and updated as data is delivered.
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        faults: Faults | None = None,
    ) -> None:
        self.target = target
        self.listen_host = listen_host
        self._port = listen_port
        self._faults = faults if faults is not None else Faults()
        self._configuring = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self._passing = asyncio.Event()  # set while mode == "pass"; senders wait on it
        self._reconciling = asyncio.Lock()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._bytes_up = 0
        self._bytes_down = 0
        self._connections_total = 0

    # -- lifecycle (caller's thread) --

    def start(self) -> FaultProxy:
        """Bind the listener and start forwarding; returns once the port is open. Raises OSError if bind fails."""
        if self._thread is not None:
            raise RuntimeError("a FaultProxy is started once")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        name = f"FaultProxy->{self.target[0]}:{self.target[1]}"
        self._thread = threading.Thread(target=self._run, args=(started,), name=name, daemon=True)
        self._thread.start()
        try:
            started.result(timeout=_THREAD_TIMEOUT_S)
        except BaseException:
            self._thread.join(_THREAD_TIMEOUT_S)
            raise
        return self

    def stop(self) -> None:
        """Close every connection and the listener and join the thread. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or not thread.is_alive():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._stopping.set)
        thread.join(_THREAD_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError(f"{thread.name} did not stop within {_THREAD_TIMEOUT_S} s")

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- faults and counters --

    @property
    def faults(self) -> Faults:
        return self._faults

    def configure(
        self,
        *,
        latency_s: float | _Unset = _UNSET,
        jitter_s: float | _Unset = _UNSET,
        bandwidth_bps: float | _Unset | None = _UNSET,
        mode: Mode | _Unset = _UNSET,
        reset_after_bytes: int | _Unset | None = _UNSET,
    ) -> Faults:
        """Change the given faults, keep the others; returns the new :class:`Faults`.

        While running, returns once the change is in effect: after ``mode="reset"`` every existing
        connection has been sent its RST, after ``mode="refuse"`` the port is closed. New delays and
        rates apply to data that arrives afterwards. Raises ValueError (nothing changes) on a bad value.
        """
        given = {
            "latency_s": latency_s,
            "jitter_s": jitter_s,
            "bandwidth_bps": bandwidth_bps,
            "mode": mode,
            "reset_after_bytes": reset_after_bytes,
        }
        changes: dict[str, Any] = {name: value for name, value in given.items() if value is not _UNSET}
        with self._configuring:
            faults = self._faults = dataclasses.replace(self._faults, **changes)
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._reconcile(), self._loop)
            future.result(timeout=_THREAD_TIMEOUT_S)
        return faults

    @property
    def port(self) -> int:
        """The listening port (kept across ``"refuse"`` and after :meth:`stop`)."""
        if self._port == 0:
            raise RuntimeError("the proxy has not been started")
        return self._port

    @property
    def bytes_up(self) -> int:
        """Bytes delivered client→target."""
        return self._bytes_up

    @property
    def bytes_down(self) -> int:
        """Bytes delivered target→client."""
        return self._bytes_down

    @property
    def connections_total(self) -> int:
        """Client connections accepted, including those reset on arrival."""
        return self._connections_total

    @property
    def connections_active(self) -> int:
        """Client connections accepted and not yet closed."""
        return len(self._connections)

    # -- the proxy's loop (its own thread) --

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        asyncio.run(self._main(started))

    async def _main(self, started: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._server = await self._listen()  # even under "refuse": the port must be known
            await self._reconcile()
        except BaseException as exc:
            if self._server is not None:
                self._server.close()
            started.set_exception(exc)
            return
        started.set_result(None)
        await self._stopping.wait()
        if self._server is not None:
            self._server.close()
            self._server = None
        await asyncio.sleep(0)  # connections accepted just before the close register themselves
        connections = list(self._connections)
        for connection in connections:
            connection.abort(rst=False)
            connection.task.cancel()
        await asyncio.gather(*(c.task for c in connections), return_exceptions=True)
        await asyncio.sleep(0)  # the aborted transports release their sockets on the next iteration

    async def _listen(self) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, self.listen_host, self._port, reuse_address=True)
        self._port = server.sockets[0].getsockname()[1]
        return server

    async def _reconcile(self) -> None:
        """Bring the listener, the pass gate and the live connections in line with the current mode."""
        async with self._reconciling:
            mode = self._faults.mode
            if mode == "pass":
                self._passing.set()
            else:
                self._passing.clear()
            if mode == "refuse" and self._server is not None:
                self._server.close()
                self._server = None
            if mode in ("reset", "refuse"):
                for connection in list(self._connections):
                    connection.abort(rst=True)
                    connection.task.cancel()
            if mode != "refuse" and self._server is None and not self._stopping.is_set():
                self._server = await self._listen()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection from accept to close.

        Never ends cancelled (asyncio 3.11's stream server chokes on a cancelled handler task); whoever
        cancels it has already aborted its sockets.
        """
        task = asyncio.current_task()
        assert task is not None
        connection = _Connection(client=writer, task=task)
        self._connections.add(connection)
        self._connections_total += 1
        try:
            try:
                await self._relay(connection, reader)
            except* (OSError, _Cut):
                connection.abort(rst=True)
            for w in connection.writers():
                w.close()  # after any pending output is flushed
            for w in connection.writers():
                with contextlib.suppress(OSError):
                    await w.wait_closed()
        except asyncio.CancelledError:
            connection.abort(rst=False)
        finally:
            self._connections.discard(connection)

    async def _relay(self, connection: _Connection, client_reader: asyncio.StreamReader) -> None:
        if self._stopping.is_set() or self._faults.mode in ("reset", "refuse"):
            raise _Cut
        await self._passing.wait()  # a black hole does not even connect upstream
        upstream_reader, connection.upstream = await asyncio.open_connection(*self.target)
        up: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(WINDOW_CHUNKS)
        down: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(WINDOW_CHUNKS)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._receive(client_reader, up))
            group.create_task(self._send(connection, up, connection.upstream, upstream=True))
            group.create_task(self._receive(upstream_reader, down))
            group.create_task(self._send(connection, down, connection.client, upstream=False))

    async def _receive(self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]) -> None:
        """Read chunks and stamp each with its release time; b"" (EOF) is queued too."""
        loop = asyncio.get_running_loop()
        release = 0.0
        while True:
            data = await reader.read(READ_SIZE)
            faults = self._faults
            delay = faults.latency_s + (random.uniform(0.0, faults.jitter_s) if faults.jitter_s else 0.0)
            release = max(loop.time() + delay, release)  # jitter never reorders
            await queue.put((release, data))
            if not data:
                return

    async def _send(
        self,
        connection: _Connection,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        """Write each chunk at its release time, paced by the bandwidth cap; pass EOF on as a half-close."""
        loop = asyncio.get_running_loop()
        paced_until = 0.0  # when the token bucket next has room; it never saves up credit while idle
        while True:
            release, data = await queue.get()
            if (wait := release - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not data:
                await self._passing.wait()
                if writer.can_write_eof():
                    writer.write_eof()
                return
            while data:
                faults = self._faults
                piece = data[: _piece_size(faults.bandwidth_bps)]
                cut = False
                if not upstream and faults.reset_after_bytes is not None:
                    room = faults.reset_after_bytes - connection.bytes_down
                    cut, piece = len(piece) >= room, piece[: max(room, 0)]
                if faults.bandwidth_bps is not None and piece:
                    paced_until = max(paced_until, loop.time()) + len(piece) * 8 / faults.bandwidth_bps
                    if (wait := paced_until - loop.time()) > 0:
                        await asyncio.sleep(wait)
                await self._passing.wait()
                if upstream:  # counted first: a peer (another thread) never sees bytes not yet counted
                    self._bytes_up += len(piece)
                else:
                    self._bytes_down += len(piece)
                    connection.bytes_down += len(piece)
                writer.write(piece)
                await writer.drain()
                if cut:
                    raise _Cut
                data = data[len(piece) :]


def _piece_size(bandwidth_bps: float | None) -> int:
    """About 10 ms of link time, so a capped link releases data smoothly rather than in bursts."""
    if bandwidth_bps is None:
        return READ_SIZE
    return max(1024, min(READ_SIZE, int(bandwidth_bps / 8 / 100)))


# -- command line --


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a proxy until SIGTERM or SIGINT; prints ``LISTENING <port>`` (flushed) once it accepts. Returns 0."""
    parser = argparse.ArgumentParser(
        prog="python -m archipel.testing.proxy", description="A TCP proxy that injects network faults."
    )
    parser.add_argument("--target", required=True, type=_host_port, metavar="HOST:PORT")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0, help="0 (default): any free port")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="one-way delay added to each direction")
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--bandwidth-mbps", type=float, help="megabit/s per connection and direction")
    parser.add_argument("--mode", choices=MODES, default="pass")
    parser.add_argument("--reset-after-bytes", type=int)
    args = parser.parse_args(argv)
    try:
        faults = Faults(
            latency_s=args.latency_ms / 1000,
            jitter_s=args.jitter_ms / 1000,
            bandwidth_bps=None if args.bandwidth_mbps is None else args.bandwidth_mbps * 1e6,
            mode=args.mode,
            reset_after_bytes=args.reset_after_bytes,
        )
    except ValueError as exc:
        parser.error(str(exc))
    # Block the stop signals before the proxy thread starts (it inherits the mask), then wait for one
    # synchronously: no handler runs at an awkward moment, and none is delivered to the wrong thread.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        with FaultProxy(
            args.target, listen_host=args.listen_host, listen_port=args.listen_port, faults=faults
        ) as proxy:
            print(f"LISTENING {proxy.port}", flush=True)
            signal.sigwait(stop_signals)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
