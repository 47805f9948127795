"""archipel: a control plane for machine learning across clouds, on-prem data centres and edge sites.

The public surface is pinned in ``__all__`` (a test checks it). Importing this package imports nothing
heavy: no pydantic models, no SQLAlchemy, no SDKs.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Client", "__version__", "job", "read_dataset", "register_model"]


def __getattr__(name: str) -> object:
    # the SDK's functions load on first use, so `import archipel` stays light
    if name in ("read_dataset", "register_model"):
        from archipel import sdk

        return getattr(sdk, name)
    if name == "Client":
        from archipel.client import Client

        return Client
    if name == "job":  # the job SDK: archipel.job.context()
        import importlib

        return importlib.import_module("archipel.job")
    raise AttributeError(f"module 'archipel' has no attribute {name!r}")
