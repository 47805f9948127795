"""Jobs and pipelines, as users write them (YAML) or build them (Python): the same pydantic models.

A job is one command with its inputs, outputs, resources, estimate and constraints; a pipeline is named steps,
each a job, whose ``needs`` form a DAG and whose outputs feed later steps as ``steps.STEP.outputs.NAME``.
Input references: a bare ``name[@vN]`` is a dataset; a model is ``models:/name@alias`` or ``models:/name/N``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema, field_validator, model_validator

from archipel.models.common import DURATION_PATTERN, GiB, Name, Seconds, StrictModel, number_or_text
from archipel.models.policy import Classification
from archipel.models.registry import ModelSpec
from archipel.models.site import Provider
from archipel.models.units import parse_duration

__all__ = [
    "Constraints",
    "InputRef",
    "JobSpec",
    "OutputSpec",
    "PipelineSpec",
    "Resources",
    "StepSpec",
    "parse_input_ref",
]

_DATASET = re.compile(r"^(?P<name>[a-z0-9][a-z0-9-]{0,62})(@v(?P<version>[1-9][0-9]*))?$")
_MODEL_ALIAS = re.compile(r"^models:/(?P<name>[a-z0-9][a-z0-9-]{0,62})@(?P<alias>[a-z][a-z0-9-]{0,62})$")
_MODEL_VERSION = re.compile(r"^models:/(?P<name>[a-z0-9][a-z0-9-]{0,62})/(?P<version>[1-9][0-9]*)$")
_STEP_OUTPUT = re.compile(
    r"^steps\.(?P<step>[a-z0-9][a-z0-9-]{0,62})\.outputs\.(?P<name>[a-z0-9][a-z0-9_-]{0,62})$"
)
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
EnvName = Annotated[str, WithJsonSchema({"type": "string", "pattern": _ENV.pattern})]
"""An environment variable's name (checked by ``_JobFields._env_names``; the pattern is for JSON schema readers)."""
_ACCEL = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(:(?P<count>[1-9][0-9]*))?$")


@dataclass(frozen=True)
class InputRef:
    """A parsed input: ``kind`` is dataset, model or step_output."""

    kind: Literal["dataset", "model", "step_output"]
    name: str
    version: int | None = None
    alias: str | None = None
    step: str | None = None

    def __str__(self) -> str:
        if self.kind == "dataset":
            return self.name if self.version is None else f"{self.name}@v{self.version}"
        if self.kind == "model":
            return (
                f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"
            )
        return f"steps.{self.step}.outputs.{self.name}"


def parse_input_ref(text: str) -> InputRef:
    """Parse an input reference; ``ValueError`` shows the accepted forms."""
    text = text.strip()
    if m := _DATASET.match(text):
        return InputRef("dataset", m["name"], int(m["version"]) if m["version"] else None)
    if m := _MODEL_ALIAS.match(text):
        if re.fullmatch(r"v[0-9]+", m["alias"]):
            raise ValueError(f"{text!r}: an alias may not look like a version; write models:/{m['name']}/N")
        return InputRef("model", m["name"], alias=m["alias"])
    if m := _MODEL_VERSION.match(text):
        return InputRef("model", m["name"], version=int(m["version"]))
    if m := _STEP_OUTPUT.match(text):
        return InputRef("step_output", m["name"], step=m["step"])
    raise ValueError(
        f"{text!r} is not an input reference; write a dataset NAME or NAME@vN, a model models:/NAME@ALIAS or "
        "models:/NAME/N, or a step output steps.STEP.outputs.NAME"
    )


def _accelerators(value: Any) -> Any:
    """``"A100:1"``, ``["A100:2"]`` or ``{A100: 1}`` → ``{"A100": 1}``."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        out: dict[str, int] = {}
        for item in value:
            m = _ACCEL.match(str(item).strip())
            if not m:
                raise ValueError(f"{item!r} is not an accelerator; write NAME or NAME:COUNT, e.g. A100:1")
            out[m["name"]] = out.get(m["name"], 0) + int(m["count"] or 1)
        return out
    return value


def _hours(value: Any) -> Any:
    """A duration in hours: ``2.5`` (hours), ``"90m"``, ``"2h"``."""
    if isinstance(value, bool):
        raise ValueError("an estimate is a number of hours or a duration like '90m'")
    if isinstance(value, int | float):
        return parse_duration(value * 3600) / 3600  # the same bounds as any duration
    if isinstance(value, str):
        return parse_duration(value) / 3600
    return value


Hours = Annotated[
    float, BeforeValidator(_hours), number_or_text(DURATION_PATTERN, "A duration: hours, or '90m', '2h'.")
]


class Resources(StrictModel):
    """What one node of the job needs."""

    cpus: float = Field(1, gt=0)
    memory: GiB = Field("4GiB", gt=0, validate_default=True)
    """Memory per node: '16GiB' or a number of GiB."""
    accelerators: Annotated[dict[str, int], BeforeValidator(_accelerators)] = Field(default_factory=dict)
    """Accelerators per node: 'A100:1', a list of them, or {A100: 1}."""
    spot: bool | Literal["auto"] = "auto"
    """true: spot only; false: on-demand only; auto: whichever is cheaper in expectation (spot risk included)."""
    nodes: int = Field(1, ge=1, le=1024)


class Constraints(StrictModel):
    """Where the job may run, beyond what the policies say."""

    sites: list[Name] | None = None
    """Only these sites."""
    deny_sites: list[Name] = Field(default_factory=list)
    providers: list[Provider] | None = None
    deny_providers: list[Provider] = Field(default_factory=list)
    jurisdictions: list[str] | None = None
    """Only sites within these jurisdictions (DE is within EU)."""
    deny_jurisdictions: list[str] = Field(default_factory=list)
    max_hourly_cost: float | None = Field(None, gt=0)
    """USD per hour for all nodes together."""


class OutputSpec(StrictModel):
    kind: Literal["dataset", "artifact"] = "artifact"
    classification: Classification | None = None
    """Defaults to the most restrictive classification among the inputs."""
    size: GiB | None = None
    """Expected size ('2GiB'), used to price moving it to the steps that read it; default 1 GiB for a dataset."""


class _JobFields(StrictModel):
    run: str = Field(min_length=1)
    """The command, run with /bin/sh in ``workdir``."""
    workdir: str = "."
    setup: str | None = None
    """A requirements file (installed once per site and cached) or a setup command."""
    envs: dict[EnvName, str] = Field(default_factory=dict)
    secrets: dict[EnvName, str] = Field(default_factory=dict)
    """Variables the job gets, each taken from the named environment variable of whoever launches it; never
    stored: {HF_TOKEN: MY_HF_TOKEN}."""
    inputs: dict[str, str] = Field(default_factory=dict)
    """Name the code uses → reference; a list [patients] is shorthand for {patients: patients}."""
    outputs: dict[str, OutputSpec] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    estimate: Hours = 1.0
    """Expected run time: hours, or a duration like '90m'."""
    constraints: Constraints = Field(default_factory=Constraints)
    retries: int = Field(2, ge=0, le=100)
    checkpoint: Seconds | None = None
    """Checkpoint interval ('10m'); makes spot cheaper in expectation, since less work is lost."""
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("inputs", mode="before")
    @classmethod
    def _list_shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            out = {}
            for item in value:
                ref = parse_input_ref(str(item))
                if ref.kind != "dataset":
                    raise ValueError(f"list shorthand takes dataset names only; name {item!r} in a mapping")
                out[ref.name] = str(item)
            return out
        return value

    @field_validator("inputs")
    @classmethod
    def _refs(cls, value: dict[str, str]) -> dict[str, str]:
        for ref in value.values():
            parse_input_ref(ref)
        return value

    @field_validator("envs", "secrets")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV.match(key):
                raise ValueError(f"{key!r} is not an environment variable name")
        return value

    def input_refs(self) -> dict[str, InputRef]:
        return {name: parse_input_ref(ref) for name, ref in self.inputs.items()}


class JobSpec(_JobFields):
    """One job."""

    name: Name


class StepSpec(_JobFields):
    """A pipeline step: a job plus the steps it needs."""

    needs: list[Name] = Field(default_factory=list)


class PipelineSpec(StrictModel):
    """Named steps forming a DAG through ``needs``."""

    name: Name
    steps: dict[Name, StepSpec] = Field(min_length=1)
    tags: dict[str, str] = Field(default_factory=dict)
    """Tags every step inherits."""
    models: dict[Name, ModelSpec] = Field(default_factory=dict)
    """Promotion gates for the models this pipeline registers (archipel.yaml's ``models:`` take precedence)."""

    @model_validator(mode="after")
    def _dag(self) -> PipelineSpec:
        for name, step in self.steps.items():
            for need in step.needs:
                if need not in self.steps:
                    raise ValueError(
                        f"step {name} needs {need!r}, which is not a step ({', '.join(self.steps)})"
                    )
            for ref in step.input_refs().values():
                if ref.kind == "step_output":
                    if ref.step not in self.steps:
                        raise ValueError(f"step {name} reads {ref}, but there is no step {ref.step!r}")
                    if ref.name not in self.steps[ref.step].outputs:
                        raise ValueError(
                            f"step {name} reads {ref}, but step {ref.step} has no output {ref.name!r}"
                        )
                    if ref.step not in self.ancestors(name):
                        raise ValueError(f"step {name} reads {ref}; add {ref.step!r} to its needs")
        self.order()  # raises on a cycle
        return self

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.steps[name].needs)
        while stack:
            step = stack.pop()
            if step not in seen:
                seen.add(step)
                stack.extend(self.steps[step].needs)
        return seen

    def order(self) -> list[str]:
        """Steps in a topological order (stable: file order among ready steps); ValueError names a cycle."""
        done: list[str] = []
        pending = dict(self.steps)
        while pending:
            ready = [n for n, s in pending.items() if all(d in done for d in s.needs)]
            if not ready:
                raise ValueError(f"the steps' needs form a cycle among: {', '.join(sorted(pending))}")
            for name in ready:
                done.append(name)
                del pending[name]
        return done

    @classmethod
    def of_job(cls, job: JobSpec) -> PipelineSpec:
        """A one-step pipeline, so the planner handles jobs and pipelines alike; the job's tags are the run's."""
        fields = {field: getattr(job, field) for field in _JobFields.model_fields}  # instances, not re-parsed
        return cls(name=job.name, steps={job.name: StepSpec(**fields)}, tags=dict(job.tags))
