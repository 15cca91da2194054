"""What the processes tell about themselves: Prometheus metrics and gauges, the metrics server of
workers and schedulers, logging and JSON log lines."""
