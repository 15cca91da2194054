"""Celery as the transport: sending a run's job by the name of its target, routing targets to
queues, the Celery configuration and the Redis broker transport."""
