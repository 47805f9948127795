"""Bearer tokens with one scope ladder everywhere in archipel: ``read`` < ``infer`` < ``deploy`` < ``admin``.

A token is ``arch_<id>_<secret>``: the id is public (``tokens ls`` shows it), the secret is 32 random bytes shown
once at creation; only its sha256 is stored (a fast hash is right for a random 256-bit secret: nothing to guess).
Verification looks the id up and compares digests in constant time; a revoked or expired token is refused. A token
may be limited to one deployment and carries the origins (jurisdictions) its bearer may assert.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from archipel.db.engine import session_scope
from archipel.db.orm import TokenRow
from archipel.db.types import utcnow
from archipel.errors import Forbidden, NotFound, SpecError, Unauthorized
from archipel.policy.audit import AuditLog
from archipel.workspace import Workspace

__all__ = ["SCOPES", "Token", "allows", "create_token", "list_tokens", "revoke_token", "verify_token"]

SCOPES = ("read", "infer", "deploy", "admin")
_TOKEN = re.compile(r"^arch_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")


def allows(scope: str, needed: str) -> bool:
    """Whether ``scope`` is at least ``needed`` on the ladder."""
    return SCOPES.index(scope) >= SCOPES.index(needed)


@dataclass(frozen=True)
class Token:
    id: str
    name: str
    scope: str
    deployment: str | None
    origins: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        out = {**self.__dict__, "origins": list(self.origins)}
        for key in ("created_at", "expires_at", "revoked_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out

    def require(self, needed: str, *, deployment: str | None = None) -> None:
        """Forbidden unless this token has ``needed`` (and, if it is limited to a deployment, it is that one)."""
        if not allows(self.scope, needed):
            raise Forbidden(f"token {self.id} has scope {self.scope}; this needs {needed}")
        if self.deployment is not None and deployment is not None and deployment != self.deployment:
            raise Forbidden(f"token {self.id} is limited to deployment {self.deployment}")


def _of(row: TokenRow) -> Token:
    return Token(row.id, row.name, row.scope, row.deployment, tuple(row.origins), row.created_at, row.expires_at,
                 row.revoked_at)  # fmt: skip


def create_token(
    workspace: Workspace, engine: Engine, *, scope: str, name: str = "", deployment: str | None = None,
    origins: list[str] | None = None, ttl: timedelta | None = None,
) -> tuple[str, Token]:  # fmt: skip
    """A new token: (the whole token, shown once; what is stored)."""
    if scope not in SCOPES:
        raise SpecError(f"scope {scope!r}: one of {', '.join(SCOPES)}")
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = TokenRow(
        id=token_id, name=name, secret_sha256=hashlib.sha256(secret.encode()).hexdigest(), scope=scope,
        deployment=deployment, origins=sorted({o.upper() for o in origins or []}),
        expires_at=utcnow() + ttl if ttl else None,
    )  # fmt: skip
    with session_scope(engine) as session:
        session.add(row)
        session.flush()
        token = _of(row)
    AuditLog(engine, workspace.state_dir).record(action="token.create", subject=token_id, outcome="done",
        reason=f"scope {scope}", details={"deployment": deployment, "origins": list(token.origins)})  # fmt: skip
    return f"arch_{token_id}_{secret}", token


def verify_token(engine: Engine, presented: str | None) -> Token:
    """The token behind ``presented`` (the Authorization header's bearer value); Unauthorized otherwise."""
    if not presented:
        raise Unauthorized("no token: send Authorization: Bearer <token>")
    m = _TOKEN.match(presented.strip())
    if not m:
        raise Unauthorized("malformed token")
    with session_scope(engine) as session:
        row = session.get(TokenRow, m[1])
        token = _of(row) if row is not None else None
        digest = row.secret_sha256 if row is not None else "0" * 64
    given = hashlib.sha256(m[2].encode()).hexdigest()
    if token is None or not hmac.compare_digest(given, digest):
        raise Unauthorized("unknown token")
    if token.revoked_at is not None:
        raise Unauthorized(f"token {token.id} was revoked")
    if token.expires_at is not None and token.expires_at <= utcnow():
        raise Unauthorized(f"token {token.id} expired")
    return token


def list_tokens(engine: Engine) -> list[Token]:
    with session_scope(engine) as session:
        return [_of(r) for r in session.scalars(select(TokenRow).order_by(TokenRow.created_at))]


def revoke_token(workspace: Workspace, engine: Engine, token_id: str) -> Token:
    with session_scope(engine) as session:
        row = session.get(TokenRow, token_id)
        if row is None:
            raise NotFound(f"no token {token_id!r}")
        row.revoked_at = row.revoked_at or utcnow()
        token = _of(row)
    AuditLog(engine, workspace.state_dir).record(action="token.revoke", subject=token_id, outcome="done",
                                                 reason="revoked")  # fmt: skip
    return token
