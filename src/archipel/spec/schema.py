"""JSON schemas generated from the models: never written by hand."""

from __future__ import annotations

from typing import Any

from archipel.models.workspace import WorkspaceSpec

__all__ = ["workspace_schema"]


def workspace_schema() -> dict[str, Any]:
    """The JSON schema of ``archipel.yaml`` (draft 2020-12), for editors and CI checks."""
    schema = WorkspaceSpec.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://archipel.dev/schemas/workspace.json",
        **schema,
        "title": "archipel.yaml",
    }
