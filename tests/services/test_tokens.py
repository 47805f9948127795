"""Tokens: shown once, stored hashed, the scope ladder, deployment limits, origins, revocation, expiry."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from archipel.db import connect
from archipel.db.engine import session_scope
from archipel.db.orm import TokenRow
from archipel.errors import Forbidden, SpecError, Unauthorized
from archipel.services.tokens import allows, create_token, list_tokens, revoke_token, verify_token
from tests.cli.conftest import run


def test_tokens_are_stored_hashed_and_verified(demo_workspace: Any) -> None:
    engine = connect(demo_workspace.db_url)
    whole, token = create_token(
        demo_workspace, engine, scope="infer", origins=["eu"], deployment="readmission"
    )
    secret = whole.split("_", 2)[2]
    with session_scope(engine) as session:
        row = session.get(TokenRow, token.id)
        assert row is not None and secret not in repr(row.__dict__) and len(row.secret_sha256) == 64
    found = verify_token(engine, whole)
    assert (found.scope, found.origins, found.deployment) == ("infer", ("EU",), "readmission")
    found.require("read")
    found.require("infer", deployment="readmission")
    with pytest.raises(Forbidden, match="needs deploy"):
        found.require("deploy")
    with pytest.raises(Forbidden, match="limited to deployment"):
        found.require("infer", deployment="other")
    for bad in (None, "", "arch_x", whole[:-1] + ("A" if whole[-1] != "A" else "B"), "Bearer " + whole):
        with pytest.raises(Unauthorized):
            verify_token(engine, bad)
    revoke_token(demo_workspace, engine, token.id)
    with pytest.raises(Unauthorized, match="revoked"):
        verify_token(engine, whole)
    expired, _ = create_token(demo_workspace, engine, scope="read", ttl=timedelta(seconds=-1))
    with pytest.raises(Unauthorized, match="expired"):
        verify_token(engine, expired)
    with pytest.raises(SpecError):
        create_token(demo_workspace, engine, scope="root")
    assert [allows("admin", s) for s in ("read", "infer", "deploy", "admin")] == [True] * 4
    assert [allows("read", s) for s in ("read", "infer", "deploy", "admin")] == [True, False, False, False]
    assert len(list_tokens(engine)) == 2
    engine.dispose()


def test_tokens_cli_prints_the_secret_once(capsys: pytest.CaptureFixture[str], demo_workspace: Any) -> None:
    w = ["--workspace", str(demo_workspace.root)]
    code, out, _ = run(capsys, *w, "tokens", "create", "--scope", "infer", "--origin", "EU", "--name", "web")
    assert code == 0
    whole = out.strip().splitlines()[-1]
    assert whole.startswith("arch_")
    code, out, _ = run(capsys, *w, "tokens", "ls", "--json")
    [listed] = __import__("json").loads(out)
    assert whole.split("_", 2)[2] not in out and listed["scope"] == "infer" and listed["origins"] == ["EU"]
    assert run(capsys, *w, "tokens", "revoke", listed["id"])[0] == 0
    assert run(capsys, *w, "tokens", "revoke", "nope")[0] == 3
