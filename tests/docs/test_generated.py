"""The generated docs are current: every page is what ``scripts/gen_docs.py`` would write now (``make docs``), every
command of the CLI has its section in ``cli.md`` with each of its options, every field of every spec model has its
row in ``specs.md``, and every benchmark is on ``benchmarks.md``."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.core import TyperGroup
from typer.main import get_command

from archipel.cli.main import app
from archipel.models.deployment import DeploymentSpec
from archipel.models.job import JobSpec, PipelineSpec
from archipel.models.workspace import WorkspaceSpec
from tests.docs.doccmds import ROOT, blocks

SPEC_MODELS = {WorkspaceSpec, JobSpec, PipelineSpec, DeploymentSpec}
"""Every model a user writes as a file: archipel.yaml, a job or pipeline (plan, run), a deployment (deploy)."""


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> types.ModuleType:
    return _load("gen_docs", ROOT / "scripts" / "gen_docs.py")


def _sections(text: str) -> dict[str, str]:
    """Markdown split at its ``##`` and ``###`` headings: heading text -> the section's body."""
    parts = re.split(r"^#{2,3} (.+)$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_generated_page_is_current(gen: types.ModuleType) -> None:
    generated = gen.pages()
    assert {str(p) for p in generated} >= {
        "docs/reference/cli.md",
        "docs/reference/specs.md",
        "docs/benchmarks.md",
    }
    stale = gen.stale(generated)
    assert not stale, f"stale generated docs, run `make docs`: {', '.join(map(str, stale))}"
    for path, text in generated.items():
        if path.suffix == ".md":  # the docs test runs every bash block; synopses belong in text blocks
            assert "```bash" not in text and not blocks(ROOT / path), path


def test_check_names_a_stale_page_and_writing_fixes_it(
    gen: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    page = tmp_path / "docs" / "reference" / "specs.md"
    page.write_text(page.read_text(encoding="utf-8").replace("`sites`", "`sites_`", 1), encoding="utf-8")
    (tmp_path / "docs" / "reference" / "schemas" / "job.schema.json").unlink()
    capsys.readouterr()
    assert gen.main(["--check"]) == 1
    said = capsys.readouterr().err
    assert "docs/reference/specs.md" in said and "job.schema.json" in said and "cli.md" not in said
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0


def _command_paths(command: typing.Any, path: str) -> Iterator[tuple[str, typing.Any]]:
    yield path, command
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            if not sub.hidden:
                yield from _command_paths(sub, f"{path} {name}")


def test_every_command_and_option_is_in_the_cli_reference() -> None:
    sections = _sections((ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8"))
    found = list(_command_paths(get_command(app), "archipel"))
    assert len(found) > 60  # the whole tree, not just the top level
    for path, command in found:
        assert f"`{path}`" in sections, f"cli.md has no section for {path}"
        body = sections[f"`{path}`"]
        assert f"```text\n{path} " in body, f"{path}: no synopsis"
        for param in command.params:
            if not getattr(param, "hidden", False):
                names = [param.metavar or param.name] if param.param_type_name == "argument" else param.opts
                assert all(f"`{name}`" in body for name in names), f"{path}: {names} missing"


def _nested(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    """Every model reachable from ``model``'s fields (through lists, maps, unions and Annotated)."""

    def types_in(annotation: typing.Any) -> Iterator[typing.Any]:
        yield annotation
        for arg in typing.get_args(annotation):
            yield from types_in(arg)

    for field in model.model_fields.values():
        for kind in types_in(field.annotation):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                yield kind
                yield from _nested(kind)


def test_every_field_of_every_spec_model_is_in_the_spec_reference(gen: types.ModuleType) -> None:
    assert {spec.model for spec in gen.SPECS} == SPEC_MODELS
    sections = _sections((ROOT / "docs" / "reference" / "specs.md").read_text(encoding="utf-8"))
    checked = 0
    for spec in gen.SPECS:
        for model in [spec.model, *_nested(spec.model)]:
            heading = spec.title if model is spec.model else f"{model.__name__} ({spec.name})"
            assert heading in sections, f"specs.md has no section {heading!r}"
            for name, field in model.model_fields.items():
                assert f"| `{field.alias or name}` |" in sections[heading], f"{heading}: no row for {name}"
                checked += 1
    assert checked > 100
    for example in (p for spec in gen.SPECS for p in spec.examples):
        assert (ROOT / example).is_file(), example


def test_every_benchmark_is_on_the_benchmarks_page(gen: types.ModuleType, tmp_path: Path) -> None:
    recorded = {}  # script -> the result name it records under (add_out_option(parser, NAME), save(NAME, ...))
    for script in (ROOT / "benchmarks").glob("*.py"):
        names = re.findall(r'(?:add_out_option\(parser, |save\()"(\w+)"', script.read_text(encoding="utf-8"))
        if names:
            recorded[script.stem] = set(names)
    assert recorded == {b.name: {b.name} for b in gen.BENCHMARKS}
    sections = _sections((ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8"))
    for bench in gen.BENCHMARKS:
        body = sections[bench.title]
        if (ROOT / "benchmarks" / "results" / f"{bench.name}.json").is_file():
            assert "Recorded " in body and "not run yet" not in body.lower(), bench.name
        else:
            assert f"Not run yet. To record it:\n\n```text\n{bench.command}\n```" in body, bench.name
    empty = _sections(gen.benchmarks_page(tmp_path))
    assert all("Not run yet" in empty[bench.title] for bench in gen.BENCHMARKS)


def test_a_quick_run_records_nothing_and_out_records_the_summary_with_its_provenance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = _load("bench_results", ROOT / "benchmarks" / "results.py")
    monkeypatch.setattr(results, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "planner.py"), "--seed", "3"])
    results.save("planner", {"seed": 3}, quick=True, out=None)
    assert not (tmp_path / "results").exists()
    results.save("planner", {"seed": 3}, quick=False, out=None)
    results.save("planner", {"seed": 3}, quick=True, out=tmp_path / "quick.json")
    for path in (tmp_path / "results" / "planner.json", tmp_path / "quick.json"):
        saved = json.loads(path.read_text(encoding="utf-8"))
        assert saved["seed"] == 3 and saved["recorded"]["command"] == "python benchmarks/planner.py --seed 3"
        assert saved["recorded"]["cpus"] >= 1 and dt.datetime.fromisoformat(saved["recorded"]["date"]).tzinfo
