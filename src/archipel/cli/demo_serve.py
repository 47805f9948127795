"""The demo's serving step: the production model deployed at both EU sites behind a gateway, EU traffic through it
while one site is killed (no request fails, none is answered outside the EU), and a US-origin request refused."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import Engine

from archipel.cli.demo_data import patient_rows
from archipel.cli.demo_models import MODEL, PRODUCTION
from archipel.models.deployment import DeploymentSpec
from archipel.services.chaos import kill_site, revive_site
from archipel.services.deployments import deploy, down
from archipel.services.models import get_version
from archipel.services.sites import check_sites
from archipel.services.tokens import create_token
from archipel.workspace import Workspace

__all__ = ["serve_step"]

SITES = ["onprem-frankfurt", "gcp-europe-west4"]
KILLED = "gcp-europe-west4"
HEALTH_S = 0.2
CLIENTS, SECONDS = 4, 3.0


def serve_step(
    workspace: Workspace, engine: Engine, out: Console, *, fast: bool = False
) -> tuple[dict[str, Any], dict[str, bool]]:
    import httpx

    seconds = SECONDS / 2 if fast else SECONDS

    spec = DeploymentSpec(name=MODEL, model=PRODUCTION, sites=SITES, sample_rate=0)
    view = deploy(
        workspace, engine, spec
    )  # (no request samples here: step 8 watches a distribution of its own)
    out.print(f"Deployed {view.model} v{view.version} at {', '.join(r['site'] for r in view.replicas)}")
    token = create_token(workspace, engine, scope="infer", name="demo", origins=["EU", "US"])[0]
    gateway = subprocess.Popen(
        [sys.executable, "-m", "archipel.cli", "--workspace", str(workspace.root), "gateway", "--port", "0",
         "--health-interval-s", str(HEALTH_S), "--base-ejection-s", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = gateway.stdout.readline() if gateway.stdout else ""
        url = f"http://127.0.0.1:{int(line.split()[1])}"
        features = get_version(engine, PRODUCTION).signature["feature_names"]
        rows = patient_rows(workspace, engine, features, SITES[0])[:8]
        body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                            "data": rows.reshape(-1).tolist()}]}  # fmt: skip
        eu = {"Authorization": f"Bearer {token}", "X-Archipel-Origin": "EU"}
        _wait_ready(httpx, url, body, eu)
        served, failed, stop = Counter(), Counter(), threading.Event()

        def load() -> None:
            with httpx.Client(base_url=url, headers=eu, timeout=10) as client:
                while not stop.is_set():
                    answer = client.post(f"/v2/models/{MODEL}/infer", json=body)
                    if answer.status_code == 200:
                        served[answer.headers["x-archipel-site"]] += 1
                    else:
                        failed[answer.status_code] += 1

        progress = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[answered]} answered, {task.fields[failed]} failed"),
                            console=out)  # fmt: skip
        traffic = progress.add_task("EU traffic through the gateway", total=seconds, answered=0, failed=0)
        started = time.monotonic()

        def show(until: float) -> None:
            while (now := time.monotonic()) < until:
                progress.update(traffic, completed=now - started, answered=sum(served.values()),
                                failed=sum(failed.values()))  # fmt: skip
                time.sleep(0.1)

        threads = [threading.Thread(target=load) for _ in range(CLIENTS)]
        with progress:
            for thread in threads:
                thread.start()
            show(started + seconds / 3)
            before = Counter(served)
            killed_at = time.monotonic()
            kill_site(workspace, engine, KILLED)
            out.print(
                f"[red]Killed[/] {KILLED}: its compute marked unreachable, its replica's process killed"
            )
            ejected_ms = _ejected_after(httpx, url, token, killed_at)
            show(time.monotonic() + seconds * 2 / 3)
            stop.set()
            for thread in threads:
                thread.join()
            progress.update(traffic, total=time.monotonic() - started, completed=time.monotonic() - started,
                            answered=sum(served.values()), failed=sum(failed.values()))  # fmt: skip
        after_kill = served[KILLED] - before[KILLED]
        us = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body,
                        headers={"Authorization": f"Bearer {token}", "X-Archipel-Origin": "US"})  # fmt: skip
    finally:
        gateway.terminate()
        gateway.communicate(timeout=30)
        down(workspace, engine, MODEL)
        revive_site(workspace, engine, KILLED)
        check_sites(workspace, engine, [KILLED])  # back to healthy, as checked, not assumed
    total = sum(served.values()) + sum(failed.values())
    out.print(
        f"{total} EU requests through the gateway in {seconds:g} s from {CLIENTS} clients: "
        f"[bold]{sum(failed.values())} failed[/]; answered at {dict(served)}. {KILLED} was killed after "
        f"{sum(before.values())} answers; the gateway took it out of rotation {ejected_ms:.0f} ms later "
        f"({after_kill} more were answered there before its replica died; those in flight then went elsewhere)."
    )
    out.print(f"A US-origin request for the same model: HTTP {us.status_code} ({us.json().get('error', '')})")
    summary = {
        "deployment": MODEL, "sites": SITES, "killed_site": KILLED, "requests": total,
        "failed": sum(failed.values()), "served_by_site": dict(served), "served_before_kill": dict(before),
        "ejected_after_ms": round(ejected_ms, 1), "us_origin_status": us.status_code,
    }  # fmt: skip
    checks = {
        "serving_no_failed_request": total > 0 and not failed,
        "serving_failed_over": served[SITES[0]] > before[SITES[0]] and before[KILLED] > 0,
        "serving_eu_only": set(served) <= set(SITES),
        "serving_us_origin_refused": us.status_code == 503,
    }
    return summary, checks


def _wait_ready(httpx: Any, url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    """Until the gateway answers an infer (its table read, its replicas checked)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body, headers=headers).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the gateway did not serve the deployment within 30 s")


def _ejected_after(httpx: Any, url: str, token: str, since: float) -> float:
    """Milliseconds from ``since`` until the gateway's metrics show the killed site's replica out of rotation."""
    deadline = since + 10
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}).text
        for line in text.splitlines():
            ejected = line.startswith("archipel_gateway_replica_ejected") and line.endswith(" 1")
            if ejected and f'site="{KILLED}"' in line:
                return (time.monotonic() - since) * 1000
        time.sleep(0.01)
    return float("nan")
