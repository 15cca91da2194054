"""What workers run: the registry of tasks, commands, workflows and code schedules, the workflow
DSL, and the errors of the worker side."""
