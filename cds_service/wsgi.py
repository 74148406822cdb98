"""WSGI entry point for gunicorn: `gunicorn cds_service.wsgi:app`."""

import gc
import logging

from cds_service.app import create_app

app = create_app()
# under gunicorn the service's own lines (refused tokens with their reason, failures) go where gunicorn's
# error log goes; without this they reach no handler and INFO lines vanish
_gunicorn = logging.getLogger("gunicorn.error")
if _gunicorn.handlers:
    _service_log = logging.getLogger("cds_service")
    _service_log.handlers = list(_gunicorn.handlers)
    _service_log.propagate = False
# the long-lived objects built at start (model, code index, FHIR model classes) need no more collection
gc.freeze()
