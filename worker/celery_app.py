"""The Celery application, configured from the same settings as the web service."""

from __future__ import annotations

from celery import Celery

from cds_service.settings import Settings


def make_celery(settings: Settings) -> Celery:
    """Broker and results on Redis; without Redis (the embedded default) tasks run in-process."""
    app = Celery("spine_cds", include=["worker.tasks", "worker.export_tasks"])
    if settings.redis_url:
        app.conf.update(broker_url=settings.redis_url, result_backend=settings.redis_url)
    else:
        app.conf.update(
            task_always_eager=True, task_eager_propagates=True, broker_url="memory://", result_backend="cache+memory://"
        )
    transport = {"visibility_timeout": settings.worker_visibility_timeout}
    # A task whose worker died comes back when a live worker sweeps the unacknowledged messages older
    # than the visibility timeout. kombu sweeps every 10 s but scans Redis only on every 10th sweep
    # (about 100 s), whatever the timeout: scan on every sweep, and sweep at least twice per timeout.
    sweeps = {"unacked_restore_interval": max(1, min(10, settings.worker_visibility_timeout // 2)), "unacked_restore_throttle": 1}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # a task is acknowledged only when done; a worker that dies mid-task gives it back
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={**transport, **sweeps},
        result_backend_transport_options=transport,
        result_expires=24 * 3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        timezone="UTC",
        beat_schedule={
            "verify-and-anchor-the-decision-log": {
                "task": "log.verify_and_anchor",
                "schedule": float(settings.verify_interval_seconds),
            },
            "purge-past-retention": {"task": "log.purge", "schedule": float(settings.purge_interval_seconds)},
            "resume-stale-population-jobs": {
                "task": "population.cleanup_stale",
                "schedule": float(min(settings.stale_job_seconds, 3600)),
            },
        },
    )
    return app
