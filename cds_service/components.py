"""What a request needs, built once per process by the app factory, and the accessor views use to reach it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy.engine import Engine

from cds_service.auditor.throttle import LoginThrottle
from cds_service.cds_hooks.auth import Authenticator
from cds_service.cds_hooks.pipeline import FeedbackPipeline, HookPipeline
from cds_service.cds_hooks.refusals import RefusalCounter
from cds_service.decision_log.writer import DecisionLog
from cds_service.runtime import Runtime
from cds_service.settings import Settings
from hooks.model import Model


@dataclass
class Components:
    """Everything a request needs, built once per process."""

    runtime: Runtime
    authenticator: Authenticator
    hooks: HookPipeline
    feedback: FeedbackPipeline
    login_throttle: LoginThrottle
    refusals: RefusalCounter
    redis: Any | None

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def model(self) -> Model:
        return self.runtime.model

    @property
    def engine(self) -> Engine:
        return self.runtime.engine

    @property
    def decision_log(self) -> DecisionLog:
        return self.runtime.decision_log


def components() -> Components:
    found: Components = current_app.extensions["spine_cds"]
    return found
