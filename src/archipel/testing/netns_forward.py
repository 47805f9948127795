"""A plain TCP forwarder that serves an inherited listening socket: the way into a network namespace.

A server started in a network namespace that has only loopback (``ip netns exec NS ...``) is reachable from
nowhere else, since that 127.0.0.1 is the namespace's own loopback. A socket, though, stays in the namespace it
was *created* in, whichever process uses it later. So the launcher creates a listener on the host's loopback
and hands its file descriptor to this forwarder, started inside the namespace: it accepts there and connects to
the target on the namespace's loopback::

    listener = socket.create_server(("127.0.0.1", 0))
    subprocess.Popen(
        ["ip", "netns", "exec", NS, sys.executable, "-m", "archipel.testing.netns_forward",
         "--listen-fd", str(listener.fileno()), "--target", "127.0.0.1:8265"],
        pass_fds=[listener.fileno()],
    )

Nothing listens anywhere but on the two loopbacks, and no route or interface joins the namespaces. The
forwarder prints ``FORWARDING <port>`` (flushed) once it accepts and runs until SIGTERM or SIGINT. Bytes are
copied as they come in both directions; a half-close is passed on, and the other direction then has
:data:`LINGER_S` to finish; an error on either side aborts both.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from collections.abc import Sequence

__all__ = ["main", "serve"]

_READ_SIZE = 64 * 1024
LINGER_S = 5.0
"""Once one direction of a connection has ended, how long the other may go on before both are closed."""


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until EOF, then half-close ``writer``."""
    while data := await reader.read(_READ_SIZE):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def _forward(
    client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, target: tuple[str, int]
) -> None:
    try:
        target_r, target_w = await asyncio.open_connection(*target)
    except OSError:
        client_w.transport.abort()  # the client sees a reset, as if it had connected to the target itself
        return
    pipes = {
        asyncio.create_task(_pipe(client_r, target_w)),
        asyncio.create_task(_pipe(target_r, client_w)),
    }
    abort = True
    try:
        first, rest = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        if rest and not any(task.exception() for task in first):
            # One side is done: wait a little for the other, not forever (an HTTP server may keep a
            # half-closed connection open for its whole keep-alive time).
            _, rest = await asyncio.wait(rest, timeout=LINGER_S)
        abort = bool(rest) or any(task.exception() for task in pipes)
    finally:
        for task in pipes:
            task.cancel()
        for writer in (client_w, target_w):
            if abort:
                writer.transport.abort()
            else:
                writer.close()


async def serve(listener: socket.socket, target: tuple[str, int], stop: asyncio.Event) -> None:
    """Forward every connection accepted on ``listener`` (already listening) to ``target`` until ``stop``."""
    # asyncio keeps only weak references to tasks: hold each connection's, or an idle one may be collected.
    connections: set[asyncio.Task[None]] = set()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(_forward(reader, writer, target))
        connections.add(task)
        task.add_done_callback(connections.discard)

    listener.setblocking(False)
    server = await asyncio.start_server(accept, sock=listener)
    async with server:
        print(f"FORWARDING {listener.getsockname()[1]}", flush=True)
        await stop.wait()
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def main(argv: Sequence[str] | None = None) -> int:
    """Forward connections from an inherited listening socket until SIGTERM or SIGINT. Returns 0."""
    parser = argparse.ArgumentParser(
        prog="python -m archipel.testing.netns_forward",
        description="Forward connections accepted on an inherited listening socket to HOST:PORT.",
    )
    parser.add_argument("--listen-fd", type=int, required=True, help="a listening TCP socket's descriptor")
    parser.add_argument("--target", type=_host_port, required=True, metavar="HOST:PORT")
    args = parser.parse_args(argv)
    try:
        listener = socket.socket(fileno=args.listen_fd)
    except OSError as exc:
        parser.error(f"--listen-fd {args.listen_fd} is not a socket: {exc}")
    if listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0:
        parser.error(f"--listen-fd {args.listen_fd} is not a listening socket")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(listener, args.target, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
