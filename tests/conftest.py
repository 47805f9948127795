"""Shared fixtures: metadata stores (SQLite and PostgreSQL) and the rule for missing real components.

Outside CI a missing real component (PostgreSQL, moto, ...) skips only the tests that need it, loudly;
under ``CI=true`` it fails them, never skips.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["tests.ray_head", "tests.demo_run"]  # the session's one Ray head and one demo run, shared

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(component: str, reason: str) -> None:
    """Skip (locally) or fail (under CI=true) because ``component`` is missing."""
    message = f"{component} unavailable: {reason}"
    if IN_CI:
        pytest.fail(message + " (CI=true: a missing real component is a failure)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test reads the developer's workspace, home or database settings."""
    for var in ("ARCHIPEL_WORKSPACE", "ARCHIPEL_DB_URL", "ARCHIPEL_LOG_LEVEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ARCHIPEL_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    url = os.environ.get("ARCHIPEL_TEST_PG_URL", "")
    if not url:
        require(
            "PostgreSQL", "ARCHIPEL_TEST_PG_URL is not set (make test sets it via scripts/ensure-postgres.sh)"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require("PostgreSQL", "the psycopg driver is not installed (pip install 'archipel[postgres]')")
    return url


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"archipel_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # server down or role missing
        admin.dispose()
        require("PostgreSQL", f"cannot create a test database: {type(exc).__name__}: {exc}")
    try:
        yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _drop_database(admin, name)
        admin.dispose()


def _drop_database(admin: Any, name: str) -> None:
    """Drop a test database; a server process of another role still on it (autovacuum) may need a moment."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError, ProgrammingError

    for attempt in range(20):
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except (OperationalError, ProgrammingError):
            if attempt == 19:
                raise
            time.sleep(0.25)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each metadata-store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def demo_workspace(tmp_path: Path):
    """A fresh demo workspace (three local sites), applied to its SQLite store."""
    from archipel.db import connect
    from archipel.services.apply import apply_plan, plan_apply
    from archipel.services.init import init_workspace

    ws = init_workspace(tmp_path / "ws", demo=True)
    engine = connect(ws.db_url)
    apply_plan(ws, engine, plan_apply(ws, engine))
    engine.dispose()
    return ws


@dataclass(frozen=True)
class S3Endpoint:
    """moto's S3 server on loopback, and the names of the variables that hold its (fake) credentials."""

    url: str
    key_env: str = "ARCHIPEL_TEST_S3_KEY"
    secret_env: str = "ARCHIPEL_TEST_S3_SECRET"

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def options(self, **extra: object) -> dict[str, object]:
        """``storage_options`` as a site would write them: credentials named, never inlined."""
        return {"endpoint_url": self.url, "key_env": self.key_env, "secret_env": self.secret_env, **extra}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Endpoint]:
    """One moto S3 server for the session, on 127.0.0.1 and a free port."""
    try:
        import s3fs  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        require("moto S3 server", f"{exc} (pip install 'moto[server]' 's3fs[boto3]')")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Endpoint(url=f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> S3Endpoint:
    """The S3 server with its credentials in the environment (and no real AWS configuration reachable)."""
    monkeypatch.setenv(s3_server.key_env, "testing")
    monkeypatch.setenv(s3_server.secret_env, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3_server


@pytest.fixture
def s3_bucket(s3: S3Endpoint) -> str:
    """A fresh, empty bucket for one test."""
    name = f"archipel-test-{uuid.uuid4().hex[:16]}"
    s3.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def ws_with_data(demo_workspace: Any, tmp_path: Path) -> Any:
    """The demo workspace with an EU ``phi`` dataset ``patients-eu`` (the 341 EU records of
    :mod:`archipel.data.samples`) at onprem-frankfurt."""
    from archipel.data.samples import write_patients_csvs
    from archipel.db import connect
    from archipel.services.data import add_dataset

    engine = connect(demo_workspace.db_url)
    csv = write_patients_csvs(tmp_path / "patients")["patients-eu"]
    add_dataset(demo_workspace, engine, "patients-eu", csv, site="onprem-frankfurt", classification="phi")
    engine.dispose()
    return demo_workspace
