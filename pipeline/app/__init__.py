"""Application services: the use cases over `Services` (ports only, no Celery, no click).

stages (the six stage functions), intake (rows first, then the message),
policy (retry / dead-letter / fail), monolith (the sequential baseline),
queue_processor, admin (migrate, reset), dead_letters, report, document_ids
and the rate-limited extractor.
"""
