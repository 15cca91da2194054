"""Workflow runs: the pure planner, the engine that applies its plans, and the jobs that run
steps."""
