"""Benchmark inputs (workloads.py) and the saved pytest-benchmark baselines (baselines/)."""
