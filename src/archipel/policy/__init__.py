"""Residency and classification policies, their decisions, and the audit log that records them."""

from __future__ import annotations

from archipel.policy.engine import DEFAULT_RULES, Decision, Place, Subject, evaluate, governing_rule
from archipel.policy.jurisdiction import within

__all__ = ["DEFAULT_RULES", "Decision", "Place", "Subject", "evaluate", "governing_rule", "within"]
