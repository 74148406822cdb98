"""WSGI entry point for gunicorn: `gunicorn cds_service.wsgi:app`."""

from cds_service.app import create_app

app = create_app()
