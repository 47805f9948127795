"""Placement: a pure planner (``plan(problem) -> Plan``), its problem data, solvers and explanations as data."""

from __future__ import annotations

from archipel.planner.problem import Edge, InputMove, Option, Problem, Rejection, StepProblem
from archipel.planner.solve import Placement, Plan, plan

__all__ = ["Edge", "InputMove", "Option", "Placement", "Plan", "Problem", "Rejection", "StepProblem", "plan"]
