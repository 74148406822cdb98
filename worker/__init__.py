"""Background work on Celery: population scoring and decision-log upkeep."""
