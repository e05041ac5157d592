"""Enforcement on the node: the state in force, the planner, the executor, reports, metrics."""
