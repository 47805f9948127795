"""Starting a replica: a registry version's ONNX, read from a site's storage (checked against its sha256), loaded
into ONNX Runtime and served by :class:`~archipel.serving.server.ModelServer` (uvloop, httptools)."""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from archipel.errors import SpecError
from archipel.serving.http1 import listen
from archipel.serving.oip import ModelInfo
from archipel.serving.server import ModelServer, ServerConfig, run_server

if TYPE_CHECKING:  # a replica's start-up should not pay for the metadata store's imports unless it needs them
    from sqlalchemy import Engine

    from archipel.workspace import Workspace

__all__ = ["build_server", "check_bind", "serve"]


def check_bind(host: str, secret: str | None) -> None:
    """A replica without a shared secret listens on loopback only, so nothing but a local gateway reaches it."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not secret:
        raise SpecError(
            f"a replica bound to {host} needs a shared secret (--secret-env VAR); or bind 127.0.0.1"
        )


def build_server(
    onnx: bytes, name: str, version: str, signature: dict[str, Any], config: ServerConfig
) -> ModelServer:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one request stream per replica process; scale with replicas
    session = ort.InferenceSession(onnx, sess_options=options, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    width = first.shape[-1] if isinstance(first.shape[-1], int) else len(signature.get("feature_names") or [])
    names = [o.name for o in session.get_outputs()]
    info = ModelInfo(
        name=name,
        version=version,
        input_name=first.name,
        input_datatype=signature["inputs"][0]["datatype"] if signature.get("inputs") else "FP32",
        width=width,
        feature_names=tuple(signature["feature_names"]) if signature.get("feature_names") else None,
        outputs=tuple(
            signature.get("outputs") or [{"name": n, "datatype": "FP32", "shape": [None]} for n in names]
        ),
    )
    feed = first.name

    def predict(rows: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, {feed: rows}), strict=True))

    return ModelServer(info, predict, config)


def serve(
    workspace: Workspace, engine: Engine, ref: str, *, site: str, host: str, port: int, secret_env: str | None,
    config: ServerConfig, sample_rate: float = 0.0, sample_prefix: str | None = None,
) -> None:  # fmt: skip
    """Run a replica of ``ref`` from ``site``'s storage until interrupted; prints ``LISTENING port`` once ready."""
    from archipel.services.models import get_version, onnx_bytes

    secret = os.environ.get(secret_env) if secret_env else None
    if secret_env and not secret:
        raise SpecError(f"--secret-env {secret_env}: the variable is not set")
    check_bind(host, secret)
    version = get_version(engine, ref)
    config.secret = secret
    app = build_server(
        onnx_bytes(workspace, version, site), version.model, str(version.version), version.signature, config
    )
    if sample_rate > 0:  # samples stay in this site's own storage
        from archipel.serving.sampling import Sampler

        prefix = sample_prefix or f"samples/{version.model}/{version.version}/{site}"
        app.sampler = Sampler(
            workspace.storage(site), prefix, sample_rate, version.signature.get("feature_names")
        )
    engine.dispose()
    sock = listen(host, port)
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    run_server(app, sock)
