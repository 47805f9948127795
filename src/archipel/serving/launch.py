"""The lean replica entry point deployments start: ``python -m archipel.serving.launch SPEC.json``.

The spec (written by the deploy service next to the job) names the ONNX in the site's storage (URL, key, sha256),
the model's name, version and signature, the bind address and batching. Nothing else is imported: no CLI, no
metadata store, so a replica's cold start is ONNX Runtime's import, the model's load and the server's start.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    from archipel.backends.storage.registry import open_store
    from archipel.serving.http1 import listen
    from archipel.serving.replica import build_server, check_bind
    from archipel.serving.server import ServerConfig, run_server

    storage = spec["storage"]
    store = open_store(storage["url"], storage.get("options") or {})
    onnx = store.get(spec["key"])
    if hashlib.sha256(onnx).hexdigest() != spec["sha256"]:
        print(f"the ONNX at {spec['key']} does not match its sha256", file=sys.stderr)
        return 3
    host = spec.get("host", "127.0.0.1")
    secret = os.environ.get(spec["secret_env"]) if spec.get("secret_env") else None
    if spec.get("secret_env") and not secret:
        print(f"the variable {spec['secret_env']} holding the replica secret is not set", file=sys.stderr)
        return 3
    check_bind(host, secret)
    config = ServerConfig(max_batch=spec.get("max_batch", 64), max_wait_ms=spec.get("max_wait_ms", 0.0),
                          secret=secret)  # fmt: skip
    app = build_server(onnx, spec["name"], str(spec["version"]), spec["signature"], config)
    if spec.get("sample_rate", 0) > 0:
        from archipel.serving.sampling import Sampler

        app.sampler = Sampler(store, spec["sample_prefix"],
                              spec["sample_rate"], spec["signature"].get("feature_names"))  # fmt: skip
    sock = listen(host, int(spec.get("port", 0)))
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    run_server(app, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
