"""Running one attempt: the task run's job, the attempt runner shared with workflow steps, the
runtime adapters (in-process, subprocess), the context a task sees, the guard, the events
outbox, retry policy, cancel monitor, and the per-process runtime."""
