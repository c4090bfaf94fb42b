"""What the service tells operators: Prometheus metrics."""
