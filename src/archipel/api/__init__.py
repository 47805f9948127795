"""The control plane's REST API (``archipel server --port``): the services the CLI uses, over HTTP, behind the same
bearer tokens and scope ladder as the gateway (``read`` < ``infer`` < ``deploy`` < ``admin``)."""

from archipel.api.app import SCOPE_KEY, create_app

__all__ = ["SCOPE_KEY", "create_app"]
