"""The sealed (AES-256-GCM, chunked) format: roundtrips, tampering of every kind, and key handling."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from pathlib import Path

import pytest

from archipel.errors import IntegrityError, SpecError
from archipel.transfer.sealed import (
    MAGIC,
    TAG_SIZE,
    DataKey,
    SealedHeader,
    load_key,
    open_bytes,
    open_chunk,
    open_stream,
    seal_bytes,
    seal_chunk,
    seal_stream,
)

CHUNK = 1000


@pytest.fixture(scope="module")
def key() -> DataKey:
    return DataKey(bytes(range(32)))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _chunks(sealed: bytes) -> tuple[SealedHeader, list[bytes]]:
    header = SealedHeader.parse(sealed)
    return header, [sealed[slice(*header.chunk_range(i))] for i in range(header.n_chunks)]


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 7 * CHUNK + 13, 8 * CHUNK])
def test_roundtrip_and_layout(key: DataKey, size: int) -> None:
    data = os.urandom(size)
    sealed = seal_bytes(data, key, chunk_size=CHUNK)
    header, chunks = _chunks(sealed)
    assert sealed.startswith(MAGIC)
    assert (header.size, header.sha256, header.key_id, header.chunk_size) == (
        size,
        _sha(data),
        key.key_id,
        CHUNK,
    )
    assert header.n_chunks == max(1, -(-size // CHUNK))
    assert len(sealed) == header.sealed_size == header.header_size + size + TAG_SIZE * header.n_chunks
    for index, piece in enumerate(chunks):  # every chunk sits at its computable offset and opens alone
        assert header.chunk_range(index)[0] == header.header_size + index * (CHUNK + TAG_SIZE)
        assert open_chunk(header, key, index, piece) == data[slice(*header.plain_range(index))]
    assert open_bytes(sealed, key) == data
    # streaming in odd pieces gives the same plaintext
    pieces = [sealed[i : i + 333] for i in range(0, len(sealed), 333)]
    assert b"".join(open_stream(iter(pieces), key)) == data


def test_each_object_gets_its_own_nonce_prefix(key: DataKey) -> None:
    a, b = seal_bytes(b"same bytes", key), seal_bytes(b"same bytes", key)
    assert SealedHeader.parse(a).nonce_prefix != SealedHeader.parse(b).nonce_prefix
    assert a[-26:] != b[-26:]


def test_header_json_has_the_documented_fields(key: DataKey) -> None:
    sealed = seal_bytes(b"x" * 10, key, chunk_size=4)
    (length,) = struct.unpack(">I", sealed[8:12])
    fields = json.loads(sealed[12 : 12 + length])
    assert fields == {
        "v": 1,
        "alg": "AES-256-GCM",
        "key_id": key.key_id,
        "chunk_size": 4,
        "size": 10,
        "sha256": _sha(b"x" * 10),
        "nonce_prefix": fields["nonce_prefix"],
    }
    assert len(bytes.fromhex(fields["nonce_prefix"])) == 8


def test_a_flipped_byte_anywhere_is_detected(key: DataKey) -> None:
    data = os.urandom(3 * CHUNK + 5)
    sealed = seal_bytes(data, key, chunk_size=CHUNK)
    header = SealedHeader.parse(sealed)
    positions = [0, 9, 13, header.header_size - 2]  # magic, length, JSON body
    positions += [header.chunk_range(i)[0] + 7 for i in range(header.n_chunks)]  # every chunk's ciphertext
    positions += [header.chunk_range(i)[1] - 1 for i in range(header.n_chunks)]  # every chunk's tag
    for position in positions:
        tampered = bytearray(sealed)
        tampered[position] ^= 0x01
        with pytest.raises(IntegrityError):
            open_bytes(bytes(tampered), key)


def test_a_tampered_header_field_fails_authentication_even_if_it_parses(key: DataKey) -> None:
    sealed = seal_bytes(os.urandom(2 * CHUNK), key, chunk_size=CHUNK)
    header = SealedHeader.parse(sealed)
    forged = SealedHeader(
        header.key_id, header.chunk_size, header.size, "0" * 64, header.nonce_prefix
    ).with_raw()
    spliced = forged.to_bytes() + sealed[header.header_size :]
    with pytest.raises(IntegrityError, match="chunk 0 failed authentication"):
        open_bytes(spliced, key)


def test_reordered_truncated_dropped_and_spliced_chunks_are_detected(key: DataKey) -> None:
    data = os.urandom(4 * CHUNK)
    sealed = seal_bytes(data, key, chunk_size=CHUNK)
    header, chunks = _chunks(sealed)
    head = header.to_bytes()
    cases = {
        "reordered": head + chunks[1] + chunks[0] + b"".join(chunks[2:]),
        "dropped last": head + b"".join(chunks[:-1]),
        "truncated": sealed[:-5],
        "trailing bytes": sealed + b"x",
        "duplicated": head + chunks[0] + chunks[0] + b"".join(chunks[2:]),
    }
    other = seal_bytes(os.urandom(4 * CHUNK), key, chunk_size=CHUNK)
    cases["spliced from another object"] = head + chunks[0] + _chunks(other)[1][1] + b"".join(chunks[2:])
    for name, blob in cases.items():
        with pytest.raises(IntegrityError):
            open_bytes(blob, key)
        assert name  # (a failing case names itself in the traceback)
    # a chunk opened at another index, or claimed as the last one, fails too
    with pytest.raises(IntegrityError, match="chunk 1"):
        open_chunk(header, key, 1, chunks[0])
    short = SealedHeader(header.key_id, CHUNK, 2 * CHUNK, header.sha256, header.nonce_prefix, header.raw)
    with pytest.raises(IntegrityError):
        open_chunk(short, key, 1, chunks[1])  # chunk 1 is not the final one of the real object


def test_a_wrong_key_names_key_ids_only(key: DataKey) -> None:
    sealed = seal_bytes(b"secret payload", key)
    other = DataKey(b"\xaa" * 32)
    with pytest.raises(IntegrityError) as err:
        open_bytes(sealed, other)
    message = str(err.value)
    assert key.key_id in message and other.key_id in message
    for secret in (key.secret, other.secret):
        assert secret.hex() not in message and repr(secret) not in message
        assert base64.b64encode(secret).decode() not in message
    assert repr(other) == f"DataKey(key_id={other.key_id!r})" and "aa" * 8 not in repr(other)


def test_seal_stream_refuses_a_plaintext_that_does_not_match_its_header(key: DataKey) -> None:
    data = os.urandom(3 * CHUNK)
    with pytest.raises(IntegrityError, match="does not match"):
        b"".join(seal_stream(data, key, size=len(data), sha256=_sha(b"other"), chunk_size=CHUNK))
    with pytest.raises(IntegrityError):
        b"".join(seal_stream(data[:-1], key, size=len(data), sha256=_sha(data), chunk_size=CHUNK))
    with pytest.raises(IntegrityError, match="longer"):
        b"".join(seal_stream(data + b"x", key, size=len(data), sha256=_sha(data), chunk_size=CHUNK))
    produced = []
    with pytest.raises(IntegrityError):
        for piece in seal_stream(data, key, size=len(data), sha256=_sha(b"other"), chunk_size=CHUNK):
            produced.append(piece)
    assert len(produced) == 3  # header and chunks 0-1: the final chunk is never produced


def test_seal_chunk_checks_lengths_and_indices(key: DataKey) -> None:
    header = SealedHeader.new(key, size=2500, sha256=_sha(b""), chunk_size=CHUNK)
    assert len(seal_chunk(header, key, 2, b"x" * 500)) == 500 + TAG_SIZE
    with pytest.raises(SpecError):
        seal_chunk(header, key, 0, b"x" * 999)
    with pytest.raises(SpecError, match="out of range"):
        seal_chunk(header, key, 3, b"")


def test_a_non_sealed_object_is_refused(key: DataKey) -> None:
    for blob in (
        b"",
        b"plain bytes, not sealed",
        MAGIC + b"\xff\xff\xff\xff",
        MAGIC + struct.pack(">I", 3) + b"{}!",
    ):
        with pytest.raises(IntegrityError):
            open_bytes(blob, key)


# -- keys ---------------------------------------------------------------------------------------------------------


def _key_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "data.key"
    path.write_bytes(content)
    path.chmod(mode)
    return path


def test_key_files_hold_raw_hex_or_base64(tmp_path: Path) -> None:
    raw = os.urandom(32)
    for content in (
        raw,
        raw.hex().encode() + b"\n",
        base64.b64encode(raw) + b"\n",
        base64.urlsafe_b64encode(raw),
    ):
        loaded = load_key(_key_file(tmp_path, content))
        assert loaded.secret == raw and loaded.key_id == hashlib.sha256(raw).hexdigest()[:16]


def test_a_key_file_others_can_read_is_refused_without_showing_the_key(tmp_path: Path) -> None:
    raw = os.urandom(32)
    for mode in (0o644, 0o640, 0o604, 0o620):
        path = _key_file(tmp_path, raw.hex().encode(), mode)
        with pytest.raises(SpecError, match="chmod 600") as err:
            load_key(path)
        assert str(path) in str(err.value) and raw.hex() not in str(err.value)


def test_bad_key_material_is_refused_without_showing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for content in (b"short", os.urandom(31), b"z" * 64, base64.b64encode(os.urandom(16))):
        with pytest.raises(SpecError, match="256-bit") as err:
            load_key(_key_file(tmp_path, content))
        assert content.decode(errors="replace") not in str(err.value)
    with pytest.raises(SpecError, match="does not exist"):
        load_key(tmp_path / "missing.key")
    monkeypatch.setenv("ARCHIPEL_TEST_DATA_KEY", "not-a-key-value")
    with pytest.raises(SpecError, match="ARCHIPEL_TEST_DATA_KEY") as err:
        load_key(key_env="ARCHIPEL_TEST_DATA_KEY")
    assert "not-a-key-value" not in str(err.value)


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = os.urandom(32)
    monkeypatch.setenv("ARCHIPEL_TEST_DATA_KEY", base64.b64encode(raw).decode())
    assert load_key(key_env="ARCHIPEL_TEST_DATA_KEY").secret == raw
    monkeypatch.setenv("ARCHIPEL_TEST_DATA_KEY", raw.hex())
    assert load_key(key_env="ARCHIPEL_TEST_DATA_KEY").secret == raw
    monkeypatch.delenv("ARCHIPEL_TEST_DATA_KEY")
    with pytest.raises(SpecError, match="not set"):
        load_key(key_env="ARCHIPEL_TEST_DATA_KEY")
    with pytest.raises(SpecError, match="exactly one"):
        load_key()


def test_data_keys_must_be_32_bytes() -> None:
    with pytest.raises(SpecError):
        DataKey(b"x" * 16)
    assert DataKey(b"k" * 32) == DataKey(b"k" * 32) and DataKey(b"k" * 32) != DataKey(b"j" * 32)
