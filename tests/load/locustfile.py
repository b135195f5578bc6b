"""The locust user lives in the package (pipeline/locustfile.py), so an install has it."""

from pipeline.locustfile import DocumentUser  # noqa: F401  (locust collects the User class)
