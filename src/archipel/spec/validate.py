"""Turn plain data + positions into strict models, with errors that name ``file:line`` and the allowed keys."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path as FsPath
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from archipel.errors import SpecError
from archipel.spec.yaml_loader import Path, Positions, load_yaml

__all__ = ["load_model_file", "parse_model"]

M = TypeVar("M", bound=BaseModel)
_MAX_REPORTED = 8


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation may hold (Optional/Union/Annotated peeled)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _model_at(model: type[BaseModel], loc: Path) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``loc`` (None if it is not a model)."""
    current: list[Any] = [model]
    for part in loc:
        nxt: list[Any] = []
        for ann in current:
            for t in _unwrap(ann):
                origin = typing.get_origin(t)
                if isinstance(t, type) and issubclass(t, BaseModel):
                    field = t.model_fields.get(str(part))
                    if field is not None:
                        nxt.append(field.annotation)
                elif origin is dict:
                    nxt.append(typing.get_args(t)[1])
                elif origin in (list, tuple) and isinstance(part, int):
                    nxt.append(typing.get_args(t)[0])
        current = nxt
    for ann in current:
        for t in _unwrap(ann):
            if isinstance(t, type) and issubclass(t, BaseModel):
                return t
    return None


def _dotted(loc: Path) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc) or "the top level"


def _describe(error: Any, model: type[BaseModel], positions: Positions) -> str:
    loc: Path = tuple(p for p in error["loc"] if p != "[key]")
    kind = error["type"]
    if kind == "extra_forbidden":
        parent, key = loc[:-1], str(loc[-1])
        where = positions.where(loc, key=True)
        owner = _model_at(model, parent)
        allowed = sorted(owner.model_fields) if owner else []
        hint = difflib.get_close_matches(key, allowed, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        return (
            f"{where}: unknown key {key!r} in {_dotted(parent)}{did_you_mean}; "
            f"allowed keys: {', '.join(allowed)}"
        )
    if kind == "missing":
        parent, key = loc[:-1], str(loc[-1])
        where = positions.where(parent, key=True)
        return f"{where}: missing required key {key!r} in {_dotted(parent)}"
    is_key_error = "[key]" in error["loc"]
    is_mapping = any(len(k) > len(loc) and k[: len(loc)] == loc for k in positions.keys)
    where = positions.where(loc, key=is_key_error or is_mapping)
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in ("literal_error", "enum") or kind.endswith("_type") or kind.endswith("_parsing"):
        message = f"got {error.get('input')!r}; {message[0].lower()}{message[1:]}"
    subject = f"site name {loc[-1]!r}" if is_key_error else _dotted(loc)
    return f"{where}: {subject}: {message}"


def parse_model(data: Any, positions: Positions, model: type[M]) -> M:
    """Validate ``data`` into ``model``; every problem is reported with its ``file:line``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(
            f"{positions.where(())}: expected a mapping of keys at the top level, got {type(data).__name__}",
            location=positions.where(()),
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        lines = [_describe(err, model, positions) for err in errors[:_MAX_REPORTED]]
        if len(errors) > _MAX_REPORTED:
            lines.append(f"... and {len(errors) - _MAX_REPORTED} more problems")
        first_line = positions.where(tuple(errors[0]["loc"])) if errors else positions.source
        raise SpecError("\n".join(lines), location=first_line) from None


def load_model_file(path: FsPath, model: type[M], *, display: str | None = None) -> M:
    """Read, parse and validate a YAML file into ``model``."""
    source = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{source}: file not found", location=source) from None
    except UnicodeDecodeError:
        raise SpecError(f"{source}: not UTF-8 text", location=source) from None
    except OSError as exc:
        raise SpecError(f"{source}: cannot read: {exc.strerror}", location=source) from None
    data, positions = load_yaml(text, source)
    return parse_model(data, positions, model)
