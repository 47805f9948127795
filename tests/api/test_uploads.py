"""The commands that send files or move data, against a remote control plane: `archipel data add` (the data file),
`archipel run` (the job's folder) and `archipel data replicate`, through `archipel server --port 0` as a process.
What arrives is what a local command would have ingested or snapshotted, the policies decide as locally, broken or
oversized bodies are refused with a message that names the user's file (not the server's scratch folder), nothing is
left behind in that folder, and an archive cannot write outside its root."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import start_server, tokens_for
from tests.serving.conftest import stop

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LIMIT_MIB = 1
"""The server's ARCHIPEL_MAX_UPLOAD_MIB here, so a 2 MiB file is too large."""


@dataclass(frozen=True)
class Remote:
    url: str
    ws: Any
    tokens: dict[str, str]
    inbox: Path

    def cli(
        self, *args: str, token: str = "deploy", cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The CLI as a user runs it against the control plane: ARCHIPEL_URL and ARCHIPEL_TOKEN, no workspace."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIPEL_")}
        env.update(
            ARCHIPEL_URL=self.url, ARCHIPEL_TOKEN=self.tokens.get(token, token), NO_COLOR="1", COLUMNS="200"
        )
        return subprocess.run([sys.executable, "-m", "archipel.cli", *args], capture_output=True, text=True,
                              timeout=120, env=env, cwd=cwd or self.inbox)  # fmt: skip

    def local(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The same command on the server's workspace, as its owner runs it there."""
        env = {k: v for k, v in os.environ.items() if k not in ("ARCHIPEL_URL", "ARCHIPEL_TOKEN")}
        return subprocess.run([sys.executable, "-m", "archipel.cli", "-w", str(self.ws.root), *args],
                              capture_output=True, text=True, timeout=120, env=env, cwd=self.inbox)  # fmt: skip

    def post(self, path: str, content: Any, **params: Any) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {self.tokens['deploy']}",
            "Content-Type": "application/octet-stream",
        }
        return httpx.post(self.url + path, content=content, params=params, headers=headers, timeout=60)

    def scratch_left(self) -> list[str]:
        folder = self.ws.state_dir / "uploads"
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    """A demo workspace (three local sites, no data) served with a 1 MiB upload limit; the demo's CSV files."""
    from archipel.data.samples import write_patients_csvs
    from archipel.data.synthetic import write_reference_csv
    from archipel.db import connect
    from archipel.services.apply import apply_plan, plan_apply
    from archipel.services.init import init_workspace

    root = tmp_path_factory.mktemp("uploads")
    ws = init_workspace(root / "ws", demo=True)
    engine = connect(ws.db_url)
    apply_plan(ws, engine, plan_apply(ws, engine))
    engine.dispose()
    inbox = root / "inbox"
    write_patients_csvs(inbox)
    write_reference_csv(inbox / "diagnosis-codes.csv", 2000, seed=9)
    tokens = tokens_for(ws, "read", "deploy", name="uploads")
    proc, url = start_server(ws.root, {**os.environ, "ARCHIPEL_MAX_UPLOAD_MIB": str(LIMIT_MIB)})
    try:
        yield Remote(url, ws, tokens, inbox)
        assert proc.poll() is None, "the server died during the tests"
    finally:
        stop(proc)


def _add(
    remote: Remote, name: str, file: str, *extra: str, token: str = "deploy"
) -> subprocess.CompletedProcess[str]:
    return remote.cli("data", "add", name, file, *extra, "--json", token=token)


def test_data_add_sends_the_file_and_the_control_plane_ingests_it_as_locally(remote: Remote) -> None:
    from archipel.data.ingest import ingest_file

    added = _add(
        remote, "patients-eu", "patients-eu.csv", "--site", "onprem-frankfurt", "--classification", "phi"
    )
    assert added.returncode == 0, added.stderr
    version = json.loads(added.stdout)
    expected = ingest_file(remote.inbox / "patients-eu.csv")  # what a local `data add` would store
    assert version["created"] is True and (version["ref"], version["rows"]) == ("patients-eu@v1", 341)
    assert version["sha256"] == expected.sha256 and version["source"] == "upload:patients-eu.csv"
    stored = remote.ws.storage("onprem-frankfurt").get(version["key"])
    assert hashlib.sha256(stored).hexdigest() == expected.sha256
    # the remote and the local view of it agree
    shown = remote.cli("data", "show", "patients-eu", "--json", token="read")
    assert json.loads(shown.stdout) == json.loads(
        remote.local("data", "show", "patients-eu", "--json").stdout
    )
    # the same file again is no new version (200, created false); a read token may not add
    again = _add(remote, "patients-eu", "patients-eu.csv")
    assert again.returncode == 0 and json.loads(again.stdout)["created"] is False
    low = _add(remote, "patients-eu", "patients-eu.csv", token="read")
    assert low.returncode != 0 and "needs deploy" in low.stderr
    listed = json.loads(remote.cli("data", "ls", "--json", token="read").stdout)
    assert [(d["name"], len(d["versions"])) for d in listed] == [("patients-eu", 1)]
    assert remote.scratch_left() == []


def test_the_policies_decide_an_upload_as_a_local_add(remote: Remote) -> None:
    """EU patient records may not be stored at a US site: refused remotely with the local exit code and rule, and
    nothing stored there."""
    args = ("us-copy", "patients-eu.csv", "--site", "aws-us-east-1", "--classification", "phi",
            "--jurisdiction", "EU")  # fmt: skip
    refused = _add(remote, *args)
    local = remote.local("data", "add", *args)
    assert refused.returncode == local.returncode != 0
    assert "default-personal-data-residency" in refused.stderr and "HTTP 409" in refused.stderr
    assert not list(remote.ws.storage("aws-us-east-1").list("datasets/us-copy/"))
    assert remote.local("data", "show", "us-copy").returncode != 0
    assert remote.scratch_left() == []


def test_broken_and_oversized_files_are_refused_naming_the_users_file(remote: Remote) -> None:
    (remote.inbox / "broken.parquet").write_bytes(b"not parquet at all")
    broken = _add(
        remote, "broken", "broken.parquet", "--site", "onprem-frankfurt", "--classification", "internal"
    )
    assert broken.returncode == 2 and "broken.parquet: cannot be read as PARQUET" in broken.stderr
    assert "uploads" not in broken.stderr and str(remote.ws.root) not in broken.stderr
    (remote.inbox / "notes.txt").write_text("a,b\n1,2\n")
    txt = _add(remote, "notes", "notes.txt", "--site", "onprem-frankfurt", "--classification", "internal")
    assert txt.returncode == 2 and "use .csv or .parquet" in txt.stderr  # refused here, before sending
    # beyond the server's limit: 413 whether the length is declared or the body is chunked
    big = remote.inbox / "big.csv"
    big.write_text("a,b\n" + "123456789,123456789\n" * (2 * 2**20 // 20))
    too = _add(remote, "big", "big.csv", "--site", "onprem-frankfurt", "--classification", "internal")
    assert too.returncode == 2 and "HTTP 413" in too.stderr and f"at most {LIMIT_MIB * 2**20:,}" in too.stderr
    query = {"format": "csv", "site": "onprem-frankfurt", "classification": "internal"}
    declared = remote.post("/api/v1/datasets/big/versions", big.read_bytes(), **query)
    chunked = remote.post("/api/v1/datasets/big/versions", iter([big.read_bytes()[i : i + 65536]
                                                                  for i in range(0, big.stat().st_size, 65536)]),
                          **query)  # fmt: skip
    for answer in (declared, chunked):
        assert answer.status_code == 413 and answer.json()["kind"] == "TooLarge", answer.text
    png = remote.post("/api/v1/datasets/png/versions", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00", **query)
    assert png.status_code == 400 and "not UTF-8" in png.json()["error"]  # a header pyarrow cannot name
    allow = httpx.request(
        "OPTIONS", remote.url + "/api/v1/runs"
    )  # GET in the app, POST in the uploads router
    assert allow.status_code == 405 and allow.headers["allow"] == "GET, POST"
    empty = remote.post("/api/v1/datasets/empty/versions", b"", **query)
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    assert remote.local("data", "show", "big").returncode != 0
    assert remote.scratch_left() == []
    assert httpx.get(remote.url + "/api/health").status_code == 200


def _job_folder(tmp_path: Path) -> Path:
    """The examples' folder as a user has it: with a .git and caches a run leaves out."""
    folder = tmp_path / "job"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0" * 64)
    return folder


def test_run_ships_the_jobs_folder_and_follows_it_to_the_end(remote: Remote, tmp_path: Path) -> None:
    from archipel.executor.launch import code_hash

    assert (
        _add(
            remote, "patients-eu", "patients-eu.csv", "--site", "onprem-frankfurt", "--classification", "phi"
        ).returncode
        == 0
    )  # fmt: skip (the first test may have added it: then nothing changes)
    folder = _job_folder(tmp_path)
    done = remote.cli("run", "job/train.yaml", "--yes", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert "trained 200 steps: accuracy" in done.stdout  # the job's own output, from the log stream
    assert "SUCCEEDED" in done.stdout
    runs = json.loads(remote.cli("runs", "ls", "--json", token="read").stdout)
    run = next(r for r in runs if r["name"] == "train-malignancy")
    assert run["state"] == "SUCCEEDED" and run["tags"] == {"team": "research", "project": "malignancy"}
    # the server snapshotted exactly the files a local run would have (no .git, no caches)
    snapshot = remote.ws.state_dir / "runs" / run["id"]
    assert (snapshot / "code.sha256").read_text().strip() == code_hash(folder)
    assert (snapshot / "code" / "train.py").read_bytes() == (folder / "train.py").read_bytes()
    assert not (snapshot / "code" / ".git").exists() and not (snapshot / "code" / "__pycache__").exists()
    model = json.loads(remote.cli("models", "show", "malignancy", "--json", token="read").stdout)
    assert model["versions"][-1]["lineage"]["run_id"] == run["id"]
    # detached: the run id at once; `runs logs -f` follows it to its end; a read token may not submit
    detached = remote.cli("run", "job/train.yaml", "--yes", "--detach", "--json", "--no-cache", cwd=tmp_path)
    assert detached.returncode == 0, detached.stderr
    run_id = json.loads(detached.stdout)["run_id"]
    followed = remote.cli("runs", "logs", run_id, "-f", token="read")
    assert followed.returncode == 0 and "trained 200 steps" in followed.stdout
    assert (
        json.loads(remote.cli("runs", "show", run_id, "--json", token="read").stdout)["state"] == "SUCCEEDED"
    )
    low = remote.cli("run", "job/train.yaml", "--yes", token="read", cwd=tmp_path)
    assert low.returncode != 0 and "needs deploy" in low.stderr
    assert remote.scratch_left() == []


def _targz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_bad_spec_or_archive_is_refused_with_a_message_and_nothing_is_submitted(
    remote: Remote, tmp_path: Path
) -> None:
    folder = _job_folder(tmp_path)
    (folder / "typo.yaml").write_text("name: typo\nrn: python train.py\n")
    typo = remote.cli("run", "job/typo.yaml", "--yes", cwd=tmp_path)
    assert typo.returncode == 2 and "typo.yaml:2" in typo.stderr  # checked here, before anything is sent
    # the API checks it too, naming the file as it is in the archive
    sent = remote.post(
        "/api/v1/runs", _targz({"typo.yaml": b"name: typo\nrn: python train.py\n"}), spec="typo.yaml"
    )
    assert sent.status_code == 400 and "typo.yaml:2: unknown key 'rn'" in sent.json()["error"], sent.text
    assert "uploads" not in sent.text
    missing = remote.post("/api/v1/runs", _targz({"train.py": b"print(1)\n"}), spec="train.yaml")
    assert missing.status_code == 400 and "not a file in the archive" in missing.json()["error"]
    garbage = remote.post("/api/v1/runs", b"\x1f\x8b not really gzip", spec="train.yaml")
    assert garbage.status_code == 400 and "gzip'd tar" in garbage.json()["error"]
    assert remote.post("/api/v1/runs", b"x" * (101 * 2**20), spec="t.yaml").status_code == 413
    runs = json.loads(remote.cli("runs", "ls", "--json", token="read").stdout)
    assert "typo" not in {r["name"] for r in runs}
    assert remote.scratch_left() == []


def test_an_archive_cannot_write_outside_its_root(tmp_path: Path) -> None:
    """Every member is checked before anything is unpacked: a path leaving the root, a link, a device, or a folder
    that would unpack beyond the limit is refused and leaves the destination empty."""
    from archipel.api.uploads import unpack
    from archipel.errors import SpecError

    def archive(*members: tarfile.TarInfo, data: bytes = b"x") -> Path:
        path = tmp_path / f"a{len(list(tmp_path.glob('a*.tgz')))}.tgz"
        with tarfile.open(path, mode="w:gz") as tar:
            tar.addfile(_info("ok.txt", size=1), io.BytesIO(b"x"))
            for member in members:
                tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
        return path

    cases = {
        "leaves its root": archive(_info("../evil.txt", size=1)),
        "leaves its root ": archive(_info("/tmp/evil-abs.txt", size=1)),
        "links are refused": archive(_info("link", kind=tarfile.SYMTYPE, target="/etc/passwd")),
        "links are refused ": archive(_info("hard", kind=tarfile.LNKTYPE, target="ok.txt")),
        "not a file or folder": archive(_info("fifo", kind=tarfile.FIFOTYPE)),
        "unpacks beyond": archive(_info("big.bin", size=4096), data=b"y" * 4096),
    }
    for expected, path in cases.items():
        dest = tmp_path / f"dest-{path.stem}"
        dest.mkdir()
        with pytest.raises(SpecError, match=expected.strip()):
            unpack(path, dest, limit=1024)
        assert not list(dest.iterdir()), expected
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil-abs.txt").exists()
    ok = tmp_path / "dest-ok"
    ok.mkdir()
    unpack(archive(), ok, limit=1024)
    assert (ok / "ok.txt").read_bytes() == b"x"


def _info(name: str, *, size: int = 0, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, target
    return info


def test_replicating_data_and_checking_sites_from_the_control_plane(remote: Remote) -> None:
    """`data replicate` and `sites check` against ARCHIPEL_URL: the same policy decisions, transfers and exit codes as
    on the workspace itself."""
    # a dataset of its own: a run in this module may have copied patients-eu already (as its input)
    added = _add(
        remote, "eu-records", "patients-eu.csv", "--site", "onprem-frankfurt", "--classification", "phi"
    )
    assert added.returncode == 0, added.stderr
    copied = remote.cli("data", "replicate", "eu-records", "--to", "gcp-europe-west4", "--json")
    assert copied.returncode == 0, copied.stderr
    report = json.loads(copied.stdout)
    version = json.loads(remote.local("data", "show", "eu-records", "--json").stdout)["versions"][-1]
    assert report["ref"] == version["ref"] and report["bytes_moved"] == version["bytes"] > 0
    assert set(version["replicas"]) == {"onprem-frankfurt", "gcp-europe-west4"}
    again = json.loads(
        remote.cli("data", "replicate", "eu-records@v1", "--to", "gcp-europe-west4", "--json").stdout
    )
    assert again["bytes_moved"] == 0 and again["already_present"] is True
    refused = remote.cli("data", "replicate", "eu-records", "--to", "aws-us-east-1")
    local = remote.local("data", "replicate", "eu-records", "--to", "aws-us-east-1")
    assert refused.returncode == local.returncode == 5 and "default-personal-data-residency" in refused.stderr
    assert not list(remote.ws.storage("aws-us-east-1").list("datasets/eu-records/"))
    assert (
        remote.cli("data", "replicate", "eu-records", "--to", "aws-us-east-1", token="read").returncode != 0
    )
    checked = remote.cli("sites", "check", "--json", "--timeout", "20")
    assert checked.returncode == 0, checked.stderr
    assert {r["site"]: r["health"] for r in json.loads(checked.stdout)} == {
        site: "healthy" for site in remote.ws.spec.sites
    }
