"""Performance: the locust load test beside the sequential baseline, and the
task-layer overhead experiments."""
