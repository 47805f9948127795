"""A small client for the gateway (or any Open Inference Protocol v2 server): ``archipel.Client(...).infer(...)``."""

from __future__ import annotations

from typing import Any

__all__ = ["Client"]


class Client:
    """``Client("http://localhost:8080", token=T, origin="EU").infer("malignancy", rows)`` → outputs by name.

    ``rows`` is a list of rows (lists of numbers, or dicts by feature name) or a 2-D NumPy array."""

    def __init__(
        self, url: str, *, token: str | None = None, origin: str | None = None, timeout_s: float = 10.0
    ):
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if origin:
            headers["X-Archipel-Origin"] = origin
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def metadata(self, model: str) -> dict[str, Any]:
        return self._checked(self._http.get(f"/v2/models/{model}"))

    def infer(self, model: str, rows: Any, *, request_id: str | None = None) -> dict[str, Any]:
        """Outputs by name, each reshaped to its shape (nested lists); raises ``httpx.HTTPStatusError`` on 4xx/5xx
        with the server's message."""
        import numpy as np

        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            features = list(rows[0])
            inputs = [{"name": f, "shape": [len(rows)], "datatype": "FP32", "data": [float(r[f]) for r in rows]}
                      for f in features]  # fmt: skip
        else:
            array = np.asarray(rows, dtype=np.float32)
            name = self.metadata(model)["inputs"][0]["name"]
            inputs = [
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": "FP32",
                    "data": array.reshape(-1).tolist(),
                }
            ]
        body: dict[str, Any] = {"inputs": inputs}
        headers = {"X-Request-Id": request_id} if request_id else {}
        if request_id:
            body["id"] = request_id
        out = self._checked(self._http.post(f"/v2/models/{model}/infer", json=body, headers=headers))
        return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]).tolist() for o in out["outputs"]}

    @staticmethod
    def _checked(response: Any) -> dict[str, Any]:
        if response.status_code >= 400:
            import httpx

            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise httpx.HTTPStatusError(
                f"{response.status_code}: {message}", request=response.request, response=response
            )
        return response.json()
