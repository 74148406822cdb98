"""The clinical and CDS Hooks domain: FHIR in, an explained assessment and cards out.

Pure Python: no Flask, Celery or database, so the web service and the population workers share it.
"""
