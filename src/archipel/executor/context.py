"""The job SDK: what user code calls inside a job archipel launched (``archipel.job.context()``).

::

    ctx = archipel.job.context()
    table = ctx.input("patients")                 # Arrow table, read from this site's storage, sha256-checked
    state = ctx.checkpoint.load()                 # None on the first attempt, the last saved state after recovery
    if ctx.checkpoint.due(): ctx.checkpoint.save(state)
    ctx.log_metric("auc", 0.97, step=10); ctx.log_params({"lr": 0.01}); ctx.log_artifact("confusion.png")
    ctx.output("scores", table)                   # a dataset output (Parquet), content-addressed

Checkpoints go to the site's storage (atomic, verified), never through user-visible paths; the control plane
copies each one, policy-checked, to a fallback site. Every call here is local file or storage I/O: no
database, no network beyond the site's storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from archipel.backends.storage.base import KeyValueStore
from archipel.backends.storage.registry import open_store
from archipel.errors import IntegrityError, NotFound, SpecError, UserError
from archipel.executor.channel import EventWriter, read_context
from archipel.executor.checkpoint import decode_state, encode_state

__all__ = ["Checkpoints", "JobContext", "context"]

DEFAULT_CHECKPOINT_S = 600.0
KEEP_CHECKPOINTS = 2
_current: JobContext | None = None


def context() -> JobContext:
    """The context of the job this process runs in; UserError outside a job archipel launched."""
    global _current
    folder = os.environ.get("ARCHIPEL_RUN_DIR")
    if not folder:
        raise UserError(
            "archipel.job.context() works inside a job archipel launched (ARCHIPEL_RUN_DIR is not set); "
            "start it with `archipel run FILE`"
        )
    if _current is None or _current.folder != Path(folder):
        _current = JobContext(Path(folder))
    return _current


def object_key(sha256: str) -> str:
    """Where content-addressed outputs live in a site's storage."""
    return f"objects/sha256/{sha256[:2]}/{sha256}"


class Checkpoints:
    """Save and load the job's state; the interval comes from the spec's ``checkpoint``."""

    def __init__(self, ctx: JobContext, spec: Mapping[str, Any]) -> None:
        self._ctx = ctx
        self.interval_s = float(spec.get("interval_s") or DEFAULT_CHECKPOINT_S)
        self.prefix: str = spec["prefix"]
        self._resume: Mapping[str, Any] | None = spec.get("resume")
        self.seq = int(self._resume["seq"]) if self._resume else 0
        self._kept: list[str] = [self._resume["key"]] if self._resume else []
        self._last = time.monotonic()
        self._loaded = False

    @property
    def resumed(self) -> bool:
        """Whether this attempt starts from a checkpoint an earlier attempt saved."""
        return self._resume is not None

    def load(self) -> dict[str, Any] | None:
        """The state of the last checkpoint (verified against its sha256), or None if there is none."""
        self._loaded = True
        if self._resume is None:
            return None
        data = self._ctx.store.get(self._resume["key"])
        if hashlib.sha256(data).hexdigest() != self._resume["sha256"]:
            raise IntegrityError(f"checkpoint {self._resume['key']} does not match its sha256")
        return decode_state(data)

    def due(self) -> bool:
        """True once ``interval_s`` has passed since the last save (or since the attempt started)."""
        return time.monotonic() - self._last >= self.interval_s

    def save(self, state: Mapping[str, Any], *, step: int | None = None) -> str:
        """Store ``state`` atomically as the next checkpoint; return its key. Only the last two are kept."""
        data = encode_state(state)
        self.seq += 1
        # the attempt is in the name: a worker of an earlier attempt that outlives its stop never overwrites one
        key = f"{self.prefix}/{self.seq:06d}-a{self._ctx.attempt}.ckpt"
        sha = self._ctx.store.put(key, data).sha256  # hashed by the store as it writes, published atomically
        at_step = step if step is not None else _int_or_none(state.get("step"))
        self._ctx.events.emit("checkpoint", key=key, sha256=sha, size=len(data), seq=self.seq, step=at_step)
        self._kept.append(key)
        while len(self._kept) > KEEP_CHECKPOINTS:
            with contextlib.suppress(NotFound):
                self._ctx.store.delete(self._kept.pop(0))
        self._last = time.monotonic()
        return key


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class JobContext:
    """One attempt of one step; see the module docstring."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.spec = read_context(folder)
        self.run_id: str = self.spec["run_id"]
        self.step: str = self.spec["step"]
        self.attempt: int = int(self.spec["attempt"])
        self.site: str = self.spec["site"]
        self.events = EventWriter(folder)
        self.checkpoint = Checkpoints(self, self.spec["checkpoint"])

    @cached_property
    def store(self) -> KeyValueStore:
        storage = self.spec["storage"]
        return open_store(storage["url"], storage.get("options") or {})

    @property
    def inputs(self) -> list[str]:
        return list(self.spec.get("inputs", {}))

    def _input(self, name: str) -> Mapping[str, Any]:
        try:
            return self.spec["inputs"][name]
        except KeyError:
            known = ", ".join(self.spec.get("inputs", {})) or "none"
            raise NotFound(f"this step has no input {name!r} (inputs: {known})") from None

    def input_bytes(self, name: str) -> bytes:
        """The input's bytes from this site's storage, checked against the sha256 the plan pinned."""
        spec = self._input(name)
        data = self.store.get(spec["key"])
        sealed = spec.get("sealed")
        if sealed:
            from archipel.transfer.sealed import load_key, open_bytes

            key_file = Path(sealed["key_file"]) if sealed.get("key_file") else None
            data = open_bytes(data, load_key(key_file, sealed.get("key_env")), where=f"input {name}")
        if hashlib.sha256(data).hexdigest() != spec["sha256"]:
            raise IntegrityError(f"input {name} ({spec.get('ref', spec['key'])}) does not match its sha256")
        return data

    def input(self, name: str) -> Any:
        """A dataset input as a pyarrow Table; an artifact input as bytes."""
        data = self.input_bytes(name)
        if self._input(name).get("kind", "dataset") == "dataset":
            from archipel.data.ingest import read_parquet

            return read_parquet(data)
        return data

    def output(self, name: str, value: Any) -> str:
        """Publish output ``name``: a dataset (pyarrow Table or pandas DataFrame, stored as Parquet) or an
        artifact (bytes or a file path). Content-addressed; returns its sha256."""
        outputs = self.spec.get("outputs", {})
        if name not in outputs:
            raise NotFound(f"this step declares no output {name!r} (outputs: {', '.join(outputs) or 'none'})")
        kind = outputs[name].get("kind", "artifact")
        if kind == "dataset":
            import pyarrow as pa

            from archipel.data.ingest import parquet_bytes

            table = (
                value if isinstance(value, pa.Table) else pa.Table.from_pandas(value, preserve_index=False)
            )
            data = parquet_bytes(table)
        elif isinstance(value, bytes | bytearray):
            data = bytes(value)
        elif isinstance(value, str | os.PathLike):
            data = Path(value).read_bytes()
        else:
            raise SpecError(f"artifact output {name} takes bytes or a file path, not {type(value).__name__}")
        sha = hashlib.sha256(data).hexdigest()
        key = object_key(sha)
        if not self.store.exists(key):
            self.store.put(key, data, expected_sha256=sha)
        self.events.emit("output", name=name, key=key, sha256=sha, size=len(data), kind=kind)
        return sha

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.events.emit("metric", key=str(key), value=float(value), step=step)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.log_metric(key, value, step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        for key, value in params.items():
            self.events.emit("param", key=str(key), text=str(value))

    def log_model(
        self,
        name: str,
        model: Any,
        *,
        sample_input: Any,
        eval_data: tuple[Any, Any] | None = None,
        feature_names: list[str] | None = None,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, Any] | None = None,
        description: str = "",
    ) -> str:
        """Register ``model`` (scikit-learn, PyTorch, or ONNX bytes/file) as the next version of ``name``.

        Here, at the site: converted to ONNX and refused if ONNX Runtime disagrees with the model on
        ``sample_input``; evaluated on ``eval_data`` (metrics, permutation importance) and the training data's
        profile taken from ``sample_input``'s population when ``eval_data`` is given; the ONNX stored in this
        site's storage. The control plane then records the version with its lineage (this run, its datasets,
        code revision, site). Returns the ONNX's sha256."""
        from archipel.registry.card import describe, store_drift_reference

        converted, found, card, reference = describe(
            model, sample_input, eval_data=eval_data, feature_names=feature_names, metrics=dict(metrics or {})
        )
        sha = hashlib.sha256(converted.onnx).hexdigest()
        key = f"models/{name}/{sha}.onnx"
        if not self.store.exists(key):
            self.store.put(key, converted.onnx, expected_sha256=sha)
        if (
            reference is not None
        ):  # stays at this site, next to the ONNX; only its pointer travels in the event
            card["drift_reference"] = store_drift_reference(self.store, name, reference)
        self.events.emit(
            "model", name=name, key=key, sha256=sha, size=len(converted.onnx), flavor=converted.flavor,
            signature=converted.signature, check=converted.check, metrics=found,
            params={str(k): str(v) for k, v in (params or {}).items()}, card=card, description=description,
        )  # fmt: skip
        return sha

    def log_artifact(self, path: str | os.PathLike[str], name: str | None = None) -> str:
        """Store a file in this site's storage next to the run; return its key."""
        source = Path(path)
        data = source.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        key = f"runs/{self.run_id}/{self.step}/artifacts/{name or source.name}"
        self.store.put(key, data, expected_sha256=sha)
        self.events.emit("artifact", key=name or source.name, text=key, sha256=sha, size=len(data))
        return key
