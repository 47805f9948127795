"""Serving: the Open Inference Protocol v2 model server (one per replica) and, later, deployments and the gateway."""
