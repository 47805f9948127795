"""Transfer engine throughput: local->local and local->S3 with 1, 4 and 8 streams, against a plain baseline.

Baselines, run in the same session on the same file: ``shutil.copyfile`` for local->local (an in-kernel copy
that neither hashes nor fsyncs, while the engine hashes, fsyncs every part and the assembled object, and
writes each byte twice: parts, then the assembled file) and one single-stream ``store.put`` of the file for
local->S3. Dirty pages are flushed (``os.sync``) before each timed run. S3 is moto's server in a
separate process behind the fault proxy (``python -m archipel.testing.proxy``, default 10 ms one-way latency),
so the client and the server do not share a GIL and every request pays a round trip. Every run is checked
afterwards by hashing what landed at the destination (outside the timed section): ``sha256_ok``.

    python benchmarks/transfer.py [--size-mib 1024] [--quick] [--json] [--latency-ms 10] [--no-s3]

``--quick`` (CI smoke mode) moves 64 MiB unless ``--size-mib`` says otherwise. Figures are MB/s (10^6 bytes/s).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from archipel.backends.storage.local import LocalStore
from archipel.backends.storage.registry import open_store
from archipel.transfer import Endpoint, transfer

MIB = 1024 * 1024
STREAMS = (1, 4, 8)


def _write_source(path: Path, size: int) -> str:
    """A file of ``size`` random bytes; returns its sha256."""
    hasher = hashlib.sha256()
    block = os.urandom(8 * MIB)
    with open(path, "wb") as handle:
        written = 0
        while written < size:
            piece = block[: min(len(block), size - written)]
            piece = hashlib.sha256(written.to_bytes(8, "big")).digest() + piece[32:]  # no two blocks alike
            handle.write(piece)
            hasher.update(piece)
            written += len(piece)
    return hasher.hexdigest()


def _sha_of(chunks: Iterator[bytes]) -> str:
    hasher = hashlib.sha256()
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.hexdigest()


def _timed(call: Callable[[], object]) -> float:
    """Wall time of ``call()``, after flushing earlier runs' dirty pages so they do not slow this one."""
    os.sync()
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _s3_behind_proxy(latency_ms: float) -> Iterator[str]:
    """moto's S3 server and the fault proxy as two child processes; yields the proxy's URL."""
    port = _free_port()
    bindir = Path(sys.executable).parent
    moto_cmd = [str(bindir / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    if not Path(moto_cmd[0]).exists():
        moto_cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    moto = subprocess.Popen(moto_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or moto.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        proxy_cmd = [sys.executable, "-m", "archipel.testing.proxy", "--target", f"127.0.0.1:{port}"]
        proxy_cmd += ["--latency-ms", str(latency_ms)]
        proxy = subprocess.Popen(proxy_cmd, stdout=subprocess.PIPE, text=True)
        assert proxy.stdout is not None
        line = proxy.stdout.readline().split()
        if len(line) != 2 or line[0] != "LISTENING":
            raise RuntimeError(f"the fault proxy did not start (said {line!r})")
        yield f"http://127.0.0.1:{line[1]}"
    finally:
        for proc in (proxy, moto):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()


def _row(route: str, method: str, streams: int, seconds: float, size: int, ok: bool) -> dict[str, Any]:
    return {
        "route": route,
        "method": method,
        "streams": streams,
        "seconds": round(seconds, 3),
        "mb_per_s": round(size / seconds / 1e6, 1),
        "sha256_ok": ok,
    }


def bench_local(work: Path, source: Path, sha: str, size: int, chunk: int) -> list[dict[str, Any]]:
    copy = work / "baseline-copy.bin"
    seconds = _timed(lambda: shutil.copyfile(source, copy))
    ok = _sha_of(LocalStore(work).iter_bytes(copy.name)) == sha
    copy.unlink()
    rows = [_row("local->local", "shutil.copyfile", 1, seconds, size, ok)]
    src = LocalStore(source.parent)
    for streams in STREAMS:
        dst = LocalStore(work / f"dst-{streams}")
        ep = Endpoint(dst, "object.bin")
        seconds = _timed(
            lambda dst_ep=ep, n=streams: transfer(
                Endpoint(src, source.name),
                dst_ep,
                sha256=sha,
                size=size,
                state_dir=work / "state",
                streams=n,
                chunk_size=chunk,
            )
        )
        ok = _sha_of(dst.iter_bytes("object.bin")) == sha
        rows.append(_row("local->local", "engine", streams, seconds, size, ok))
        shutil.rmtree(dst.root)
    return rows


def bench_s3(
    work: Path, source: Path, sha: str, size: int, chunk: int, latency_ms: float
) -> list[dict[str, Any]]:
    import boto3

    rows: list[dict[str, Any]] = []
    with _s3_behind_proxy(latency_ms) as url:
        os.environ.update(BENCH_S3_KEY="testing", BENCH_S3_SECRET="testing", AWS_DEFAULT_REGION="us-east-1")
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        client = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=bucket)
        options = {"endpoint_url": url, "key_env": "BENCH_S3_KEY", "secret_env": "BENCH_S3_SECRET"}
        store = open_store(f"s3://{bucket}/bench", options)

        def put() -> None:
            with open(source, "rb") as handle:
                store.put("baseline.bin", handle)

        seconds = _timed(put)
        ok = _sha_of(store.iter_bytes("baseline.bin")) == sha
        store.delete("baseline.bin")
        rows.append(_row("local->s3", "store.put", 1, seconds, size, ok))
        src = LocalStore(source.parent)
        for streams in STREAMS:
            key = f"engine-{streams}.bin"
            seconds = _timed(
                lambda k=key, n=streams: transfer(
                    Endpoint(src, source.name),
                    Endpoint(store, k),
                    sha256=sha,
                    size=size,
                    state_dir=work / "state",
                    streams=n,
                    chunk_size=chunk,
                )
            )
            ok = _sha_of(store.iter_bytes(key)) == sha
            store.delete(key)
            rows.append(_row("local->s3", "engine", streams, seconds, size, ok))
        client.close()
    return rows


def _with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    baselines = {row["route"]: row["mb_per_s"] for row in rows if row["method"] != "engine"}
    return [{**row, "ratio": round(row["mb_per_s"] / baselines[row["route"]], 2)} for row in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, help="object size (default 1024, or 64 with --quick)")
    parser.add_argument("--quick", action="store_true", help="CI smoke mode: a 64 MiB object")
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=10.0, help="one-way latency the proxy adds (S3)")
    parser.add_argument("--no-s3", action="store_true", help="skip local->S3 (needs moto[server], s3fs)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = parser.parse_args()
    size = (args.size_mib or (64 if args.quick else 1024)) * MIB
    chunk = args.chunk_mib * MIB
    with tempfile.TemporaryDirectory(prefix="archipel-bench-") as tmp:
        work = Path(tmp)
        (work / "src").mkdir()
        source = work / "src" / "object.bin"
        sha = _write_source(source, size)
        rows = bench_local(work, source, sha, size, chunk)
        if not args.no_s3:
            rows += bench_s3(work, source, sha, size, chunk, args.latency_ms)
    rows = _with_ratios(rows)
    result = {
        "size_mib": size // MIB,
        "chunk_mib": args.chunk_mib,
        "latency_ms": None if args.no_s3 else args.latency_ms,
        "sha256": sha,
        "runs": rows,
        "all_verified": all(row["sha256_ok"] for row in rows),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{size // MIB} MiB, {args.chunk_mib} MiB chunks, S3 via moto + proxy ({args.latency_ms} ms one way)"
        )
        print(
            f"{'route':<14}{'method':<18}{'streams':>8}{'seconds':>10}{'MB/s':>10}{'x baseline':>12}  sha256"
        )
        for row in rows:
            print(
                f"{row['route']:<14}{row['method']:<18}{row['streams']:>8}{row['seconds']:>10.2f}"
                f"{row['mb_per_s']:>10.1f}{row['ratio']:>12.2f}  {'ok' if row['sha256_ok'] else 'MISMATCH'}"
            )
    return 0 if result["all_verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
