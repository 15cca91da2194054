"""The use cases, each owning its transactions: creating runs, reading and cancelling them, a
run's attempts, recovering lost ones, workflows' nodes, access, the definition catalogue,
retention; and the ports (event log, dispatcher) they talk to Redis and Celery through."""
