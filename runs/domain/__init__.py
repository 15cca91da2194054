"""Pure domain vocabulary: runs, statuses, events and errors. Imports nothing of ours."""
