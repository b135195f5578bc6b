"""Pure domain core: no Celery, Redis, SQL or SDK imports live here."""
