"""Alerts reach their webhook (a real HTTP server on loopback), are audited whether or not the hook answers, and a
service-level breach measured on a replica's own counters raises one."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append({"type": self.headers["Content-Type"], **json.loads(self.rfile.read(length))})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    server.shutdown()
    server.server_close()


def _workspace(root: Path, webhook: str) -> tuple[Any, Any]:
    from archipel.db import connect
    from archipel.services.apply import apply_plan, plan_apply
    from archipel.services.init import init_workspace
    from archipel.workspace import load_workspace

    ws = init_workspace(root, demo=True)
    ws.file.write_text(ws.file.read_text() + f"\nalerts: {{webhook: '{webhook}'}}\n")
    ws = load_workspace(root)
    engine = connect(ws.db_url)
    apply_plan(ws, engine, plan_apply(ws, engine))
    return ws, engine


def test_an_alert_is_posted_to_the_webhook_and_audited(tmp_path: Path, hook: tuple[str, list]) -> None:
    from archipel.policy.audit import AuditLog
    from archipel.services.monitoring import list_alerts, raise_alert

    url, received = hook
    ws, engine = _workspace(tmp_path / "ws", url)
    assert (
        raise_alert(ws, engine, "slo", "scoring", "gcp-europe-west4", "p99 too high", {"p99_ms": 900}) == []
    )
    (stored,) = list_alerts(engine)
    assert received == [{"type": "application/json", **stored}]
    assert received[0]["details"] == {"p99_ms": 900} and received[0]["kind"] == "slo"
    (entry,) = AuditLog(engine, ws.state_dir).entries(action="monitor.alert")
    assert (entry.subject, entry.outcome, entry.reason) == ("scoring", "slo", "p99 too high")
    engine.dispose()


def test_a_dead_webhook_does_not_lose_the_alert(tmp_path: Path) -> None:
    import socket

    from archipel.policy.audit import AuditLog
    from archipel.services.monitoring import list_alerts, raise_alert

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ws, engine = _workspace(tmp_path / "ws", f"http://127.0.0.1:{port}/hook")
    raise_alert(ws, engine, "drift", "scoring", "onprem-frankfurt", "mean_texture drifted", {})
    assert [a["reason"] for a in list_alerts(engine)] == ["mean_texture drifted"]
    (failed,) = AuditLog(engine, ws.state_dir).entries(action="monitor.webhook")
    assert failed.outcome == "failed" and "refused" in failed.reason.lower()
    engine.dispose()


def test_a_webhook_must_be_an_http_url() -> None:
    from pydantic import ValidationError

    from archipel.models.workspace import WorkspaceSpec

    with pytest.raises(ValidationError, match="write an http:// or https:// URL"):
        WorkspaceSpec.model_validate({"alerts": {"webhook": "file:///etc/passwd"}})
