"""``archipel init``: create a workspace, optionally the demo archipelago of local sites."""

from __future__ import annotations

import os
from pathlib import Path

from archipel.errors import Conflict
from archipel.workspace import STATE_DIR, WORKSPACE_FILE, Workspace, load_workspace

__all__ = ["DEMO_SPEC", "MINIMAL_SPEC", "init_workspace"]

# Capacity is what archipel schedules at once; here the processes share this machine.
# Local folders and processes standing in for two clouds and an on-prem data centre, in two jurisdictions.
# Cloud sites are priced from the bundled price catalog; the on-prem site by its amortized cost.
DEMO_SPEC = """\
# archipel workspace: three local sites standing in for two clouds and an on-prem data centre.
# Edit freely, then `archipel apply`. Run `archipel schema` for every allowed key.
version: 1
name: demo
sites:
  aws-us-east-1:
    provider: aws
    region: us-east-1
    jurisdiction: US
    storage: file://sites/aws-us-east-1
    compute: local
    capacity: {cpus: 8, memory: 32GiB}
    labels: {tier: cloud}
  gcp-europe-west4:
    provider: gcp
    region: europe-west4
    jurisdiction: EU
    storage: file://sites/gcp-europe-west4
    compute: local
    capacity: {cpus: 8, memory: 32GiB}
    labels: {tier: cloud}
  onprem-frankfurt:
    provider: onprem
    region: frankfurt
    jurisdiction: EU
    storage: file://sites/onprem-frankfurt
    compute: local
    capacity: {cpus: 4, memory: 16GiB}
    # Owned hardware, amortized over 4 years (servers, power, space, staff).
    pricing: {cpu_hour: 0.021, memory_gib_hour: 0.0028}
    labels: {tier: datacenter}
"""

MINIMAL_SPEC = """\
# archipel workspace. Add sites (aws, gcp, azure, onprem, edge, local), then `archipel apply`.
# Run `archipel schema` for every allowed key.
version: 1
name: {name}
sites:
  local:
    provider: local
    region: {region}
    jurisdiction: {jurisdiction}
    storage: file://sites/local
    compute: local
    capacity: {{cpus: {cpus}, memory: 4GiB}}
"""


def init_workspace(
    root: Path,
    *,
    demo: bool = False,
    force: bool = False,
    jurisdiction: str = "EU",
    region: str = "frankfurt",
) -> Workspace:
    """Write ``archipel.yaml`` and the state and site folders under ``root``; refuse to overwrite."""
    root = root.expanduser().resolve()
    path = root / WORKSPACE_FILE
    if path.exists() and not force:
        raise Conflict(f"{path} exists already; pass --force to overwrite it")
    root.mkdir(parents=True, exist_ok=True)
    name = "demo" if demo else _name_from(root)
    text = (
        DEMO_SPEC
        if demo
        else MINIMAL_SPEC.format(
            name=name, region=region, jurisdiction=jurisdiction, cpus=max(1, os.cpu_count() or 1)
        )
    )
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    (root / STATE_DIR).mkdir(exist_ok=True)
    (root / STATE_DIR / ".gitignore").write_text("*\n", encoding="utf-8")
    workspace = load_workspace(root)
    for site in workspace.spec.sites.values():
        if site.storage.startswith("file://") and not site.storage.startswith("file:///"):
            (root / site.storage.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    return workspace


def _name_from(root: Path) -> str:
    cleaned = "".join(ch if ch.isalnum() else "-" for ch in root.name.lower()).strip("-")
    return (cleaned or "workspace")[:63]
