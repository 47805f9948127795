"""Every command the README and the docs show runs, as shown (see ``tests/docs/doccmds.py`` for the markers)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.docs.doccmds import ROOT, DocRun, blocks, run_doc

DOCS = [ROOT / "README.md", ROOT / "examples" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
NO_TEST_ALLOWED = 12
"""The ``no-test`` blocks (real clouds, the suite itself) all docs may have: raising it is a decision, not a drift."""


LANES = 2
"""Pages run two at a time, each in its own folder with its own free ports and ARCHIPEL_HOME: a page is mostly
process start-ups, one after another, and one page at a time left the second core idle."""
PAGES = [p for p in DOCS if blocks(p)]


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Path, Future[DocRun]]]:
    """Every page started at once on :data:`LANES` workers; each test waits for its own."""
    pool = ThreadPoolExecutor(LANES, thread_name_prefix="docs")
    futures = {page: pool.submit(run_doc, page, tmp_path_factory.mktemp("docs") / "session", timeout_s=280)
               for page in PAGES}  # fmt: skip
    try:
        yield futures
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.slow
@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_in_the_file_runs(path: Path, page_runs: dict[Path, Future[DocRun]]) -> None:
    run = page_runs[path].result()
    assert run.returncode == 0, f"{path.name}: failed at {run.failed_at}\n{run.output[-6000:]}"


def test_the_docs_show_commands_and_few_are_left_unrun() -> None:
    found = [b for p in DOCS for b in blocks(p)]
    ran = [b for b in found if b.mode != "no-test"]
    skipped = [f"{b.where}: {b.arg}" for b in found if b.mode == "no-test"]
    print(f"{len(found)} bash blocks in {len(DOCS)} files: {len(ran)} run, {len(skipped)} not ({skipped})")
    assert len(ran) >= 20 and len(skipped) <= NO_TEST_ALLOWED, skipped
    assert (ROOT / "docs" / "index.md").is_file()
    linked = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    for page in DOCS[2:]:  # every page is reachable from the index
        if page.name != "index.md" and page.parent.name != "reference":
            assert page.name in linked, f"docs/index.md does not link {page.name}"


def test_a_marker_without_its_argument_or_above_another_fence_is_refused(tmp_path: Path) -> None:
    for text, problem in (
        ("<!-- docs: no-test -->\n```bash\nls\n```\n", "no-test needs a reason"),
        ("<!-- docs: fails -->\n```yaml\na: 1\n```\n", "above a yaml fence"),
        ("```bash\nls\n", "never closes"),
    ):
        page = tmp_path / "page.md"
        page.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=problem):
            blocks(page)
    page.write_text("<!-- docs: background -->\n```bash\nsleep 60\n```\n", encoding="utf-8")
    with pytest.raises(ValueError, match="needs ready=URL"):
        _ = blocks(page)[0].ready


def test_a_failing_command_is_reported_at_its_line_and_an_unexpected_success_too(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```bash\necho one\nfalse\necho two\n```\n", encoding="utf-8")
    run = run_doc(page, tmp_path / "a")
    assert run.returncode != 0 and run.failed_at == "page.md:5" and "two" not in run.output.split("false")[-1]
    page.write_text("# t\n\n<!-- docs: fails -->\n```bash\narchipel version\n```\n", encoding="utf-8")
    run = run_doc(page, tmp_path / "b")
    assert run.returncode != 0 and "page.md:5 was expected to fail" in run.output
