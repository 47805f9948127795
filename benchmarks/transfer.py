"""Transfer engine throughput: local->local and local->S3 with 1, 4 and 8 streams, against plain baselines.

Local->local is compared with two baselines, run in the same session on the same file:

- ``shutil.copyfile``, as is: an in-kernel copy that neither hashes nor fsyncs (column ``x baseline``);
- ``shutil.copyfile`` followed by an fsync of the copy and of its folder, i.e. the durability the engine
  provides before it returns (column ``x copyfile+fsync``, the fair comparison).

The engine hashes every byte with sha256 (whole object, in order, as read back from the destination), fsyncs
every part before acknowledging it and the published object and folder at the end. The methods run in
alternation, ``--repeat`` times each (default 3), and each row reports the median. Before every timed run,
of any method: a scratch file as large as the object is written and deleted, the source is read once so it
is in the page cache (``--cold``: evicted from it, with ``posix_fadvise(DONTNEED)``, so every method reads
it from the disk: the case of a replica of data nobody read lately), and dirty pages are flushed
(``os.sync``). The scratch file is there because a VM whose
balloon reports free pages to the host pays for the first touch of pages freed a few seconds earlier (here
writing 1 GiB into fresh page cache took 2.6 s instead of 0.2 s): without it, whichever method runs after a
pause pays that, and the ratios measure the VM. Every run is checked afterwards by hashing what landed at
the destination (outside the timed section): ``sha256_ok``. The header line gives the CPU count and the load
average before the runs: the engine's sha256 needs a CPU, the copy mostly waits on the disk, so a busy
machine lowers the ratios.

Local->S3 is compared with one single-stream ``store.put`` of the file, each run once. S3 is moto's server in
a separate process behind the fault proxy (``python -m archipel.testing.proxy``, default 10 ms one-way
latency), so the client and the server do not share a GIL and every request pays a round trip.

    python benchmarks/transfer.py [--size-mib 1024] [--repeat 3] [--cold] [--quick] [--json] [--latency-ms 10]
                                  [--no-s3] [--out PATH]

``--quick`` (CI smoke mode) moves 64 MiB once unless told otherwise. Figures are MB/s (10^6 bytes/s).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from results import add_out_option, save

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


def _level(source: Path, size: int, scratch: Path, *, cold: bool) -> None:
    """Put every local run in the same state: the source in the page cache (or, ``cold``, evicted from it), and
    as many bytes as the copy will write just written to a scratch file and deleted, so the page cache the run
    fills is backed by the host."""
    buffer = bytearray(8 * MIB)
    with open(scratch, "wb") as handle:
        for _ in range(-(-(size + size // 8 + 8 * MIB) // len(buffer))):
            handle.write(buffer)
    scratch.unlink()
    with open(source, "rb") as handle:
        if cold:
            os.fsync(handle.fileno())
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        else:
            while handle.readinto(buffer):
                pass


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


def _median_row(route: str, method: str, streams: int, runs: list[tuple[float, bool]], size: int) -> dict:
    row = _row(route, method, streams, statistics.median(s for s, _ in runs), size, all(ok for _, ok in runs))
    return {**row, "all_seconds": [round(s, 3) for s, _ in runs]}


def bench_local(
    work: Path, source: Path, sha: str, size: int, chunk: int, repeat: int, *, cold: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The local rows (as-is baseline first) and the fsync'd baseline; every method runs ``repeat`` times,
    in alternation."""
    src = LocalStore(source.parent)
    copy = work / "copies" / "baseline-copy.bin"
    copy.parent.mkdir()

    def copyfile(fsync: bool) -> tuple[float, bool]:
        def run() -> None:
            shutil.copyfile(source, copy)
            if fsync:
                for path, flags in ((copy, os.O_RDONLY), (copy.parent, os.O_RDONLY | os.O_DIRECTORY)):
                    fd = os.open(path, flags)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)

        seconds = _timed(run)
        ok = _sha_of(LocalStore(copy.parent).iter_bytes(copy.name)) == sha
        copy.unlink()
        return seconds, ok

    def engine(streams: int) -> tuple[float, bool]:
        dst = LocalStore(work / f"dst-{streams}")
        ep = Endpoint(dst, "object.bin")
        seconds = _timed(
            lambda: transfer(
                Endpoint(src, source.name),
                ep,
                sha256=sha,
                size=size,
                state_dir=work / "state",
                streams=streams,
                chunk_size=chunk,
            )
        )
        ok = _sha_of(dst.iter_bytes("object.bin")) == sha
        shutil.rmtree(dst.root)
        return seconds, ok

    methods: dict[tuple[str, int], Callable[[], tuple[float, bool]]] = {
        ("shutil.copyfile", 1): lambda: copyfile(False),
        ("shutil.copyfile+fsync", 1): lambda: copyfile(True),
        **{("engine", n): (lambda n=n: engine(n)) for n in STREAMS},
    }
    runs: dict[tuple[str, int], list[tuple[float, bool]]] = {name: [] for name in methods}
    for _ in range(repeat):
        for name, method in methods.items():
            _level(source, size, work / "scratch.bin", cold=cold)
            runs[name].append(method())
    rows = [_median_row("local->local", method, n, runs[(method, n)], size) for method, n in methods]
    return [row for row in rows if row["method"] != "shutil.copyfile+fsync"], rows[1]


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


def _with_ratios(rows: list[dict[str, Any]], fsynced: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``ratio``: against the route's as-is baseline; ``ratio_fsync`` (local): against the fsync'd copy."""
    baselines = {row["route"]: row["mb_per_s"] for row in rows if row["method"] != "engine"}
    out = []
    for row in rows:
        row = {**row, "ratio": round(row["mb_per_s"] / baselines[row["route"]], 2)}
        if fsynced is not None and row["route"] == fsynced["route"]:
            row["ratio_fsync"] = round(row["mb_per_s"] / fsynced["mb_per_s"], 2)
        out.append(row)
    return out


def _verdict(rows: list[dict[str, Any]]) -> list[str]:
    """Whether local->local meets the target (engine >= 1.0x the plain copy at 4 and 8 streams), said plainly."""
    engine = [row for row in rows if row["route"] == "local->local" and row["method"] == "engine"]
    lines = []
    for column, label in (("ratio_fsync", "copyfile+fsync (fair)"), ("ratio", "copyfile as is (no fsync)")):
        ratios = {row["streams"]: row[column] for row in engine if row["streams"] in (4, 8)}
        met = all(r >= 1.0 for r in ratios.values())
        shown = ", ".join(f"{n} streams {r:.2f}x" for n, r in sorted(ratios.items()))
        lines.append(f"local->local vs {label}: {shown} -> target {'MET' if met else 'MISSED'}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, help="object size (default 1024, or 64 with --quick)")
    parser.add_argument("--quick", action="store_true", help="CI smoke mode: a 64 MiB object, one run each")
    parser.add_argument("--repeat", type=int, help="local runs per method, in alternation (default 3)")
    parser.add_argument(
        "--cold", action="store_true", help="evict the source from the page cache before every local run"
    )
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=10.0, help="one-way latency the proxy adds (S3)")
    parser.add_argument("--no-s3", action="store_true", help="skip local->S3 (needs moto[server], s3fs)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    add_out_option(parser, "transfer")
    args = parser.parse_args()
    size = (args.size_mib or (64 if args.quick else 1024)) * MIB
    repeat = max(1, args.repeat or (1 if args.quick else 3))
    chunk = args.chunk_mib * MIB
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="archipel-bench-") as tmp:
        work = Path(tmp)
        (work / "src").mkdir()
        source = work / "src" / "object.bin"
        sha = _write_source(source, size)
        rows, fsynced = bench_local(work, source, sha, size, chunk, repeat, cold=args.cold)
        if not args.no_s3:
            rows += bench_s3(work, source, sha, size, chunk, args.latency_ms)
    rows = _with_ratios(rows, fsynced)
    result = {
        "size_mib": size // MIB,
        "chunk_mib": args.chunk_mib,
        "latency_ms": None if args.no_s3 else args.latency_ms,
        "repeat": repeat,
        "source_cache": "cold" if args.cold else "warm",
        "cpus": os.cpu_count(),
        "load_before": round(load, 2),
        "sha256": sha,
        "runs": rows,
        "fsync_baseline": fsynced,
        "verdict": _verdict(rows),
        "all_verified": all(row["sha256_ok"] for row in [*rows, fsynced]),
    }
    save("transfer", result, quick=args.quick, out=args.out)
    if args.json:
        print(json.dumps(result))
    else:
        s3 = "no S3" if args.no_s3 else f"S3 via moto + proxy ({args.latency_ms} ms one way, one run each)"
        print(
            f"{size // MIB} MiB, {args.chunk_mib} MiB chunks; local: median of {repeat} alternating runs per "
            f"method, source {'evicted from' if args.cold else 'in'} the page cache; {s3}; {os.cpu_count()} "
            f"CPUs, load average {load:.2f} before the runs"
        )
        print(
            f"{'route':<14}{'method':<23}{'streams':>8}{'seconds':>9}{'MB/s':>9}{'x baseline':>12}"
            f"{'x copyfile+fsync':>18}  sha256"
        )
        for row in [*rows[:1], {**fsynced, "ratio": None, "ratio_fsync": 1.0}, *rows[1:]]:
            ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
            fair = f"{row['ratio_fsync']:.2f}" if row.get("ratio_fsync") is not None else "-"
            print(
                f"{row['route']:<14}{row['method']:<23}{row['streams']:>8}{row['seconds']:>9.2f}"
                f"{row['mb_per_s']:>9.1f}{ratio:>12}{fair:>18}  {'ok' if row['sha256_ok'] else 'MISMATCH'}"
            )
        print("x baseline: against shutil.copyfile as is (local->local) or one store.put (local->s3)")
        for line in result["verdict"]:
            print(line)
    return 0 if result["all_verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
