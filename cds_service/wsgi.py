"""WSGI entry point for gunicorn: `gunicorn cds_service.wsgi:app`."""

import gc

from cds_service.app import create_app

app = create_app()
# the long-lived objects built at start (model, code index, FHIR model classes) need no more collection
gc.freeze()
