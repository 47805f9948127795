"""Turn a CSV or Parquet file into the Parquet bytes archipel stores, with its schema and identity.

The output is deterministic for a given input and pyarrow version, so adding the same file twice yields the same
sha256 and therefore no new version. pyarrow is imported here, when data is touched, never by ``--help``.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archipel.errors import NotFound, SpecError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "FORMATS",
    "DatasetRef",
    "Ingested",
    "ingest_file",
    "parquet_bytes",
    "parse_ref",
    "read_parquet",
    "schema_of",
]

_REF = re.compile(r"^(?P<name>[a-z0-9][a-z0-9-]{0,62})(@v(?P<version>[1-9][0-9]*))?$")


@dataclass(frozen=True)
class DatasetRef:
    name: str
    version: int | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@v{self.version}"


def parse_ref(text: str) -> DatasetRef:
    """``name`` or ``name@vN``; anything else is a SpecError that shows the form."""
    match = _REF.match(text.strip())
    if not match:
        raise SpecError(f"{text!r} is not a dataset reference; write NAME or NAME@vN (e.g. patients@v2)")
    version = match.group("version")
    return DatasetRef(match.group("name"), int(version) if version else None)


@dataclass(frozen=True)
class Ingested:
    data: bytes
    """The Parquet file's bytes."""
    sha256: str
    rows: int
    columns: list[dict[str, Any]]


def schema_of(table: pa.Table) -> list[dict[str, Any]]:
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in table.schema]


def parquet_bytes(table: pa.Table) -> bytes:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", write_statistics=True)
    return sink.getvalue()


FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
"""File suffix -> the format :func:`ingest_file` reads it as."""


def ingest_file(path: Path, *, shown: str | None = None) -> Ingested:
    """Read ``path`` (``.csv``, ``.parquet``/``.pq``) and return its Parquet bytes, identity and schema; errors name
    the file as ``shown`` (default: ``path``)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    name = shown or str(path)
    if not path.is_file():
        raise NotFound(f"no file {name}")
    suffix = path.suffix.lower()
    try:
        if FORMATS.get(suffix) == "csv":
            table = pacsv.read_csv(path)
        elif FORMATS.get(suffix) == "parquet":
            table = pq.read_table(path)
        else:
            raise SpecError(f"{name}: unsupported format {suffix or '(none)'!r}; use .csv or .parquet")
    except pa.ArrowInvalid as exc:
        detail = str(exc).replace(str(path), name)  # pyarrow names the path it opened
        raise SpecError(f"{name}: cannot be read as {suffix[1:].upper()}: {detail}") from exc
    if table.num_columns == 0:
        raise SpecError(f"{name}: no columns")
    try:
        table.schema.names  # noqa: B018 (pyarrow decodes the names here: a CSV header may not be UTF-8)
    except UnicodeDecodeError:
        raise SpecError(f"{name}: its column names are not UTF-8 text") from None
    table = table.replace_schema_metadata(None)  # pandas/arrow metadata would make identical data hash apart
    data = parquet_bytes(table)
    return Ingested(data, hashlib.sha256(data).hexdigest(), table.num_rows, schema_of(table))


def read_parquet(data: bytes) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data))
