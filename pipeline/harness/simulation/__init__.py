"""Virtual-time simulation of the Celery-on-Redis deployment (issue 7)."""
