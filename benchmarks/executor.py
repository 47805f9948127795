"""Executor overhead: launching a no-op job (local, Ray) and a checkpoint save/load, against the bare operations.

Launch: ``LaunchRequest(["true"])`` through :class:`~archipel.backends.compute.local.LocalCompute` (capacity 2
cpus, a fresh state folder), timed until ``launch`` returns (``launch``) and until ``wait`` reports the job
SUCCEEDED (``launch+wait``, with ``wait``'s own polling: 5 ms, doubling to 50 ms). The bare operation is
``subprocess.run(["true"])``. With ``--ray-address http://HOST:PORT`` the same job goes through
:class:`~archipel.backends.compute.ray.RayJobsCompute` (``open_compute("ray+http://...")``), against its own bare
runs; the benchmark never starts a Ray head. Every ended job is forgotten outside the timed section, so the
state folder (or the cluster's job list) stays as small for the last run as for the first.

Checkpoint: ``{"weights": float32 array of --size-mb MB, "step": 123}`` saved the way the job SDK's
``Checkpoints.save`` does (``encode_state``, then ``LocalStore.put(key, data)``: a temp file, hashed while
written, fsynced, renamed, folder fsynced; its sha256 is the one recorded) and loaded
the way ``Checkpoints.load`` does (``store.get``, sha256 check, ``decode_state``). Left out of the SDK's save: its
event line and its deletion of the checkpoint before last (an append and an unlink). The baselines: the array's
bytes written to a file (open, write, flush, fsync, close) and read back (open, read, ``np.frombuffer``). Each
load is checked against the saved array outside the timed section. Rows ``save:PART`` and ``load:PART`` time
the parts of the archipel path against the same bare operation (medians of each part: they need not add up).
Every file is deleted after its run, so each save writes a new file; before every timed checkpoint round, dirty
pages are flushed (``os.sync``) and a scratch file as large as the state is written and deleted (see
``transfer.py``: a VM whose balloon returned freed pages pays for touching them again, and that cost would
land on whichever method runs after a pause).

Method and baseline run in alternation, the order flipped every round, after one untimed warm-up each; each
row is the median. ``x bare`` is the method's median time over the bare operation's median from the same run.

    python benchmarks/executor.py [--launches 20] [--repeat 5] [--size-mb 100] [--ray-address URL] [--quick]
                                  [--json] [--out PATH]

``--quick`` (CI smoke mode): 3 launches, one 8 MB checkpoint round. Sizes are 10^6 bytes. Exit code 1 if a job
did not succeed or a load did not return what was saved.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from results import add_out_option, save

from archipel.backends.compute.base import ComputeBackend, JobState, LaunchRequest, Resources, WithForget
from archipel.backends.compute.local import LocalCompute
from archipel.backends.compute.registry import open_compute
from archipel.backends.storage.local import LocalStore
from archipel.executor.checkpoint import decode_state, encode_state

MB = 1_000_000
Sample = dict[str, float]
"""One round of one method: named durations in seconds."""


def _bare() -> Sample:
    start = time.perf_counter()
    subprocess.run(["true"], check=True)
    return {"run": time.perf_counter() - start}


def _launch(backend: ComputeBackend, ok: list[bool]) -> Sample:
    start = time.perf_counter()
    job_id = backend.launch(LaunchRequest(["true"], name="bench-noop"))
    launched = time.perf_counter() - start
    status = backend.wait(job_id, timeout_s=120)
    done = time.perf_counter() - start
    ok.append(status.state is JobState.SUCCEEDED)
    if isinstance(backend, WithForget):
        backend.forget(job_id)
    return {"launch": launched, "launch+wait": done}


def _alternate(methods: dict[str, Callable[[], Sample]], rounds: int) -> dict[str, list[Sample]]:
    """One untimed warm-up of each method, then ``rounds`` rounds, the order flipped every round."""
    for method in methods.values():
        method()
    runs: dict[str, list[Sample]] = {name: [] for name in methods}
    order = list(methods)
    for i in range(rounds):
        for name in order if i % 2 == 0 else reversed(order):
            runs[name].append(methods[name]())
    return runs


def _row(case: str, method: str, seconds: list[float], base: float | None, size: int | None) -> dict:
    median = statistics.median(seconds)
    return {
        "case": case,
        "method": method,
        "seconds": round(median, 6),
        "mb_per_s": round(size / median / MB, 1) if size else None,
        "ratio": round(median / base, 2) if base else 1.0,
        "all_seconds": [round(s, 6) for s in seconds],
    }


def bench_launch(case: str, backend: ComputeBackend, rounds: int) -> tuple[list[dict[str, Any]], bool]:
    """Rows for the bare run, ``launch`` and ``launch+wait``; and whether every job SUCCEEDED."""
    ok: list[bool] = []
    runs = _alternate({"bare": _bare, "job": lambda: _launch(backend, ok)}, rounds)
    bare = [s["run"] for s in runs["bare"]]
    base = statistics.median(bare)
    rows = [_row(case, 'subprocess.run(["true"])', bare, None, None)]
    for part in ("launch", "launch+wait"):
        rows.append(_row(case, part, [s[part] for s in runs["job"]], base, None))
    return rows, all(ok)


def _prefault(scratch: Path, size: int) -> None:
    """Write and delete ``size`` bytes, then flush dirty pages, so the next run starts from the same state."""
    block = bytes(8 * MB)
    with open(scratch, "wb") as handle:
        for _ in range(-(-size // len(block))):
            handle.write(block)
    scratch.unlink()
    os.sync()


def bench_checkpoint(work: Path, size: int, rounds: int) -> tuple[list[dict[str, Any]], int, bool]:
    """Rows for the save and load baselines and archipel paths; the checkpoint's size; whether loads matched."""
    weights = np.random.default_rng(7).random(size // 4, dtype=np.float32)
    state = {"weights": weights, "step": 123}
    store = LocalStore(work / "store")
    plain = work / "plain.bin"
    scratch = work / "scratch.bin"
    ok: list[bool] = []
    seq = 0
    encoded = 0

    def plain_round() -> Sample:
        _prefault(scratch, size)
        start = time.perf_counter()
        with open(plain, "wb") as handle:
            handle.write(weights.data)
            handle.flush()
            os.fsync(handle.fileno())
        saved = time.perf_counter() - start
        start = time.perf_counter()
        with open(plain, "rb") as handle:
            loaded = np.frombuffer(handle.read(), dtype=np.float32)
        read = time.perf_counter() - start
        ok.append(np.array_equal(loaded, weights))
        plain.unlink()
        return {"save": saved, "load": read}

    def archipel_round() -> Sample:
        nonlocal seq, encoded
        seq += 1
        key = f"runs/bench/train/checkpoints/{seq:06d}.ckpt"
        _prefault(scratch, size)
        t0 = time.perf_counter()
        data = encode_state(state)
        t1 = time.perf_counter()
        sha = store.put(key, data).sha256  # the store hashes what it writes
        t3 = time.perf_counter()
        encoded = len(data)
        del data
        t4 = time.perf_counter()
        got = store.get(key)
        t5 = time.perf_counter()
        verified = hashlib.sha256(got).hexdigest() == sha
        t6 = time.perf_counter()
        loaded = decode_state(got) if verified else {}
        t7 = time.perf_counter()
        ok.append(verified and loaded["step"] == 123 and np.array_equal(loaded["weights"], weights))
        store.delete(key)
        return {
            "save": t3 - t0,
            "save:encode_state": t1 - t0,
            "save:put+sha256": t3 - t1,
            "load": t7 - t4,
            "load:get": t5 - t4,
            "load:sha256": t6 - t5,
            "load:decode_state": t7 - t6,
        }

    runs = _alternate({"plain": plain_round, "archipel": archipel_round}, rounds)
    rows: list[dict[str, Any]] = []
    for op, baseline, method in (
        ("save", "write+flush+fsync", "encode_state+put(sha256)"),
        ("load", "read+np.frombuffer", "get+sha256+decode_state"),
    ):
        base = [s[op] for s in runs["plain"]]
        rows.append(_row(f"checkpoint-{op}", baseline, base, None, size))
        mine = [s[op] for s in runs["archipel"]]
        rows.append(_row(f"checkpoint-{op}", method, mine, statistics.median(base), size))
        for part in (name for name in runs["archipel"][0] if name.startswith(f"{op}:")):
            seconds = [s[part] for s in runs["archipel"]]
            rows.append(_row(f"checkpoint-{op}", part, seconds, statistics.median(base), None))
    return rows, encoded, all(ok)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, help="timed launches per method (default 20, 3 with --quick)")
    parser.add_argument("--repeat", type=int, help="timed checkpoint rounds (default 5, 1 with --quick)")
    parser.add_argument("--size-mb", type=int, help="checkpoint size in MB (default 100, 8 with --quick)")
    parser.add_argument("--ray-address", help="Ray Jobs API, http://HOST:PORT, to also launch through Ray")
    parser.add_argument("--quick", action="store_true", help="CI smoke mode: few launches, one 8 MB round")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    add_out_option(parser, "executor")
    args = parser.parse_args()
    launches = max(1, args.launches or (3 if args.quick else 20))
    rounds = max(1, args.repeat or (1 if args.quick else 5))
    size = (args.size_mb or (8 if args.quick else 100)) * MB
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="archipel-bench-") as tmp:
        work = Path(tmp)
        local = LocalCompute.from_address(None, state_dir=work / "local", capacity=Resources(cpus=2))
        rows, jobs_ok = bench_launch("launch-local", local, launches)
        if args.ray_address:
            ray = open_compute(
                f"ray+{args.ray_address}", state_dir=work / "ray", cpus=2, memory_bytes=0, accelerators={}
            )
            ray_rows, ray_ok = bench_launch("launch-ray", ray, launches)
            rows, jobs_ok = rows + ray_rows, jobs_ok and ray_ok
            ray_note = f"Ray Jobs API at {args.ray_address}"
        else:
            ray_note = "Ray skipped: no --ray-address (the benchmark does not start a Ray head)"
        ckpt_rows, ckpt_bytes, loads_ok = bench_checkpoint(work, size, rounds)
    result = {
        "quick": args.quick,
        "launches": launches,
        "checkpoint_rounds": rounds,
        "size_mb": size // MB,
        "checkpoint_bytes": ckpt_bytes,
        "cpus": os.cpu_count(),
        "load_before": round(load, 2),
        "ray": {"ran": bool(args.ray_address), "note": ray_note},
        "runs": rows + ckpt_rows,
        "jobs_succeeded": jobs_ok,
        "loads_verified": loads_ok,
    }
    save("executor", result, quick=args.quick, out=args.out)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"no-op launches: median of {launches}; checkpoint of {size // MB} MB ({ckpt_bytes} bytes encoded): "
            f"median of {rounds}; alternating rounds; {os.cpu_count()} CPUs, load average {load:.2f} before "
            "the runs"
        )
        print(f"{'case':<17}{'method':<27}{'median ms':>11}{'MB/s':>9}{'x bare':>9}")
        for row in result["runs"]:
            mbs = f"{row['mb_per_s']:.1f}" if row["mb_per_s"] is not None else "-"
            print(
                f"{row['case']:<17}{row['method']:<27}{row['seconds'] * 1000:>11.2f}{mbs:>9}{row['ratio']:>9.2f}"
            )
        print(ray_note)
        print(f"jobs succeeded: {'yes' if jobs_ok else 'NO'}; loads verified: {'yes' if loads_ok else 'NO'}")
    return 0 if jobs_ok and loads_ok else 1


if __name__ == "__main__":
    sys.exit(main())
