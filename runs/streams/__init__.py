"""The run event log on Redis Streams: appending, closing and publishing a run's events,
following them live, and the shared readers of the API; on a Redis or a Redis Cluster."""
