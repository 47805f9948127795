"""Test and benchmark tooling: real components that misbehave on purpose (see ``proxy``)."""
