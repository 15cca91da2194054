"""Schedules: the catalogue, firing due occurrences into runs, recurrence (cron, interval, once),
schedules written in code, and the scheduler process."""
