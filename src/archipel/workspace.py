"""A loaded workspace: ``archipel.yaml``, its state directory, and the backends of its sites.

Found in this order: an explicit path (``--workspace``), ``ARCHIPEL_WORKSPACE``, then upward from the
current directory. The state directory (``.archipel/`` beside ``archipel.yaml``) holds the default SQLite
metadata store and the local compute backends' job folders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from archipel.errors import NotFound, SpecError
from archipel.models.site import CLOUD_PROVIDERS, SiteSpec
from archipel.models.workspace import WorkspaceSpec
from archipel.settings import settings
from archipel.spec.validate import parse_model
from archipel.spec.yaml_loader import Path as SpecPath
from archipel.spec.yaml_loader import Positions, load_yaml

if TYPE_CHECKING:
    from archipel.backends.compute.base import ComputeBackend
    from archipel.backends.storage.base import KeyValueStore
    from archipel.pricing.catalog import PriceCatalog

__all__ = ["STATE_DIR", "WORKSPACE_FILE", "Workspace", "find_workspace_root", "load_workspace"]

WORKSPACE_FILE = "archipel.yaml"
STATE_DIR = ".archipel"


def find_workspace_root(explicit: Path | None = None, *, cwd: Path | None = None) -> Path:
    """The directory holding ``archipel.yaml``: ``explicit``, then ``ARCHIPEL_WORKSPACE``, then upward."""
    for candidate in (explicit, settings().workspace):
        if candidate is not None:
            candidate = candidate.expanduser().resolve()
            if candidate.is_file() and candidate.name.endswith((".yaml", ".yml")):
                candidate = candidate.parent
            if not (candidate / WORKSPACE_FILE).is_file():
                raise NotFound(
                    f"no {WORKSPACE_FILE} in {candidate}; create one with `archipel init {candidate}`"
                )
            return candidate
    start = (cwd or Path.cwd()).resolve()
    for directory in (start, *start.parents):
        if (directory / WORKSPACE_FILE).is_file():
            return directory
    raise NotFound(
        f"no {WORKSPACE_FILE} in {start} or any parent directory; run `archipel init --demo` to create one, "
        "or pass --workspace / set ARCHIPEL_WORKSPACE"
    )


@dataclass
class Workspace:
    """``archipel.yaml`` parsed and checked, rooted at ``root``."""

    root: Path
    spec: WorkspaceSpec
    positions: Positions = field(repr=False)

    @property
    def file(self) -> Path:
        return self.root / WORKSPACE_FILE

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def db_url(self) -> str:
        """``ARCHIPEL_DB_URL``, else ``metadata_store``, else a SQLite file in the state directory."""
        env = settings().db_url
        if env:
            return env
        if self.spec.metadata_store:
            return self.spec.metadata_store
        return f"sqlite:///{self.state_dir / 'archipel.db'}"

    def where(self, path: SpecPath, *, key: bool = False) -> str:
        """``archipel.yaml:LINE`` of a spec path, for errors found after parsing."""
        return self.positions.where(path, key=key)

    def site(self, name: str) -> SiteSpec:
        try:
            return self.spec.sites[name]
        except KeyError:
            known = ", ".join(sorted(self.spec.sites)) or "none"
            raise NotFound(f"no site {name!r} in {self.file}; known sites: {known}") from None

    @cached_property
    def catalog(self) -> PriceCatalog:
        """The bundled price catalog plus the workspace's own CSVs."""
        from archipel.pricing.catalog import PriceCatalog  # the catalog parses CSVs; only when asked

        return PriceCatalog.load([self.root / f for f in self.spec.catalog.files])

    def storage(self, name: str) -> KeyValueStore:
        """A fresh storage backend for site ``name`` (SDKs imported now, not before)."""
        from archipel.backends.storage.registry import open_store

        site = self.site(name)
        return open_store(site.storage, dict(site.storage_options), base_dir=self.root)

    def storage_url(self, name: str) -> str:
        """Site ``name``'s storage URL as any process opens it, wherever it runs: a local path made absolute
        (``file://sites/x`` and ``sites/x`` are relative to the workspace), other URLs as written."""
        url = self.site(name).storage
        scheme, sep, rest = url.partition("://")
        if sep and scheme != "file":
            return url
        path = Path(rest if sep else url)
        return (path if path.is_absolute() else self.root / path).resolve().as_uri()

    def compute(self, name: str) -> ComputeBackend:
        """The compute backend of site ``name``."""
        from archipel.backends.compute.registry import open_compute

        site = self.site(name)
        return open_compute(
            site.compute,
            state_dir=self.state_dir / "compute" / name,
            cpus=site.capacity.cpus,
            memory_bytes=site.capacity.memory,
            accelerators=dict(site.capacity.accelerators),
        )

    def check(self) -> None:
        """Checks that need the price catalog: known regions and offers, distinct storage. Raises SpecError."""
        problems: list[str] = []
        catalog = self.catalog
        seen_storage: dict[str, str] = {}
        for name, site in self.spec.sites.items():
            if site.provider in CLOUD_PROVIDERS:
                offered = catalog.offers(provider=site.provider, region=site.region)
                if not offered:
                    regions = sorted({o.region for o in catalog.offers(provider=site.provider)})
                    problems.append(
                        f"{self.where(('sites', name, 'region'))}: the price catalog has no {site.provider} region "
                        f"{site.region!r}; known: {', '.join(regions)} (or add your own CSV under catalog.files)"
                    )
                elif site.offers:
                    types = {o.instance_type for o in offered}
                    for i, wanted in enumerate(site.offers):
                        if wanted not in types:
                            problems.append(
                                f"{self.where(('sites', name, 'offers', i))}: {wanted!r} is not offered in "
                                f"{site.provider} {site.region}; known: {', '.join(sorted(types))}"
                            )
            if site.location is None:
                try:
                    catalog.location(site.provider, site.region)
                except NotFound:
                    problems.append(
                        f"{self.where(('sites', name, 'region'))}: no known location for region {site.region!r}; "
                        "add `location: {lat: ..., lon: ...}` to the site"
                    )
            key = _storage_identity(site.storage, self.root)
            if key in seen_storage:
                problems.append(
                    f"{self.where(('sites', name, 'storage'))}: site {name!r} uses the same storage as site "
                    f"{seen_storage[key]!r}; each site needs its own storage so data stays where policies put it"
                )
            seen_storage[key] = name
        if problems:
            raise SpecError("\n".join(problems), location=problems[0].split(": ", 1)[0])


def _storage_identity(url: str, root: Path) -> str:
    if "://" not in url:
        return str((root / url).resolve())
    scheme, rest = url.split("://", 1)
    if scheme == "file":
        path = Path(rest) if rest.startswith("/") else root / rest
        return str(path.resolve())
    return f"{scheme}://{rest.rstrip('/')}"


def load_workspace(explicit: Path | None = None, *, check: bool = True) -> Workspace:
    """Find, parse and (by default) check the workspace. Raises NotFound or SpecError."""
    root = find_workspace_root(explicit)
    path = root / WORKSPACE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read: {exc}", location=str(path)) from None
    data, positions = load_yaml(text, str(path))
    spec = parse_model(data, positions, WorkspaceSpec)
    workspace = Workspace(root=root, spec=spec, positions=positions)
    if check:
        workspace.check()
    return workspace
