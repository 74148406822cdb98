"""The worker entry point: `celery -A worker.app worker` and `celery -A worker.app beat`."""

from cds_service.settings import load_settings
from worker.celery_app import make_celery

celery = make_celery(load_settings())
app = celery
