"""The model registry: ONNX conversion checked against the source model, signatures, model cards, promotion
gates and MLflow interop. Storage and the metadata store are used through :mod:`archipel.services.models`."""
