"""The locust user lives in the package (pipeline/harness/perf/locustfile.py): installs have it."""

from pipeline.harness.perf.locustfile import DocumentUser  # noqa: F401  (locust collects the User class)
