"""What a request needs, built once per process by the app factory, and the accessor views use to reach it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy.engine import Engine

from cds_service.audit.throttle import LoginThrottle
from cds_service.auth import Authenticator
from cds_service.db import DecisionLog
from cds_service.pipeline import FeedbackPipeline, HookPipeline
from cds_service.settings import Settings
from hooks.model import Model


@dataclass
class Components:
    """Everything a request needs, built once per process."""

    settings: Settings
    model: Model
    engine: Engine
    decision_log: DecisionLog
    authenticator: Authenticator
    hooks: HookPipeline
    feedback: FeedbackPipeline
    login_throttle: LoginThrottle
    redis: Any | None


def components() -> Components:
    found: Components = current_app.extensions["spine_cds"]
    return found
