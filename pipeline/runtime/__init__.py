"""The Celery runtime: the app and its configuration, the stage tasks, the kombu
transport patch, broker-mode checks and the start-up preflight."""
