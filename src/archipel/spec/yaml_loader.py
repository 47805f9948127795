"""Safe YAML loading that remembers where every value came from.

``load_yaml(text, source)`` returns plain Python data plus a ``Positions`` map from a path of keys and
indexes (``("sites", "aws-us-east-1", "storage")``) to a 1-based line number, so validation errors can name
``file:line``. Only YAML's core tags are accepted; ``!!python/object`` and any custom tag are refused, as are
duplicate keys and non-string keys.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import yaml

from archipel.errors import SpecError

__all__ = ["Path", "Positions", "load_yaml"]

Path = tuple[str | int, ...]

_CORE_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}


@dataclass
class Positions:
    """Line numbers (1-based) of the values and keys of a loaded document."""

    source: str
    values: dict[Path, int] = field(default_factory=dict)
    keys: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path, *, key: bool = False) -> int | None:
        """Line of ``path``, or of its nearest ancestor that has one."""
        table = self.keys if key else self.values
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            if prefix in table:
                return table[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return None

    def where(self, path: Path, *, key: bool = False) -> str:
        line = self.line_of(path, key=key)
        return f"{self.source}:{line}" if line else self.source


class _Builder:
    def __init__(self, source: str) -> None:
        self.positions = Positions(source)
        self._scalars = yaml.SafeLoader("")

    def fail(self, node: yaml.Node, message: str) -> SpecError:
        line = node.start_mark.line + 1
        return SpecError(
            f"{self.positions.source}:{line}: {message}", location=f"{self.positions.source}:{line}"
        )

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.positions.values[path] = node.start_mark.line + 1
        if node.tag not in _CORE_TAGS:
            raise self.fail(
                node,
                f"the YAML tag {node.tag!r} is not allowed; archipel files hold plain data only "
                "(strings, numbers, booleans, lists and mappings)",
            )
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalars.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise self.fail(key_node, "YAML merge keys ('<<') are not supported; write the keys out")
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _CORE_TAGS:
                raise self.fail(key_node, "mapping keys must be plain strings")
            key: Hashable = self._scalars.construct_object(key_node)
            if not isinstance(key, str):
                key = str(key_node.value)
            if key in out:
                first = self.positions.keys.get((*path, key))
                raise self.fail(
                    key_node,
                    f"duplicate key {key!r}" + (f" (first defined on line {first})" if first else ""),
                )
            self.positions.keys[(*path, key)] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, (*path, key))
        return out


def load_yaml(text: str, source: str = "<string>") -> tuple[Any, Positions]:
    """Parse ``text`` (one YAML document) into plain data and the line of every value.

    Raises ``SpecError`` naming ``source:line`` for syntax errors, unsafe tags and duplicate keys.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        where = f"{source}:{line}" if line else source
        problem = exc.problem or "invalid YAML"
        raise SpecError(f"{where}: invalid YAML: {problem}", location=where) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: invalid YAML: {exc}", location=source) from None
    finally:
        loader.dispose()
    builder = _Builder(source)
    if node is None:
        return None, builder.positions
    return builder.build(node, ()), builder.positions
