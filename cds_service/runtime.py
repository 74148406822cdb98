"""What every entry point builds from the settings: the web app, the workers and the command line use this one
object for the engine, the model, the keys, the decision log and the anchor file, and it owns their disposal."""

from __future__ import annotations

from functools import cached_property
from types import TracebackType

from sqlalchemy.engine import Engine

from cds_service.database import make_engine, schema_is_current, upgrade
from cds_service.decision_log.chain import AnchorFile
from cds_service.decision_log.signed_note import Signer
from cds_service.decision_log.writer import DecisionLog
from cds_service.keys import audit_key, checkpoint_signer, pseudonym_key
from cds_service.settings import Settings
from hooks.model import Model, load_model


class SchemaOutdated(RuntimeError):
    """The database lacks the newest schema and the command may not change it."""


class Runtime:
    """Built once per process from one `Settings`; `close()` (or leaving a `with` block) disposes of the engine.

    The model and the keys are read on first use: a command that needs neither does not load the model
    or, on embedded defaults, generate keys into the instance folder."""

    def __init__(self, settings: Settings, *, round_trip_seconds: float | None = None) -> None:
        self.settings = settings
        settings.instance_path.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = make_engine(settings.effective_database_url, round_trip_seconds=round_trip_seconds)

    @cached_property
    def model(self) -> Model:
        return load_model(site=self.settings.site)

    @cached_property
    def pseudonym_key(self) -> bytes:
        return pseudonym_key(self.settings)

    @cached_property
    def audit_key(self) -> bytes:
        return audit_key(self.settings)

    @cached_property
    def checkpoint_signer(self) -> Signer:
        return checkpoint_signer(self.settings)

    @cached_property
    def anchors(self) -> AnchorFile:
        return AnchorFile(self.settings.effective_anchor_path)

    @cached_property
    def decision_log(self) -> DecisionLog:
        return DecisionLog(self.engine, self.pseudonym_key, self.audit_key)

    def migrate(self) -> None:
        """Bring the schema to the newest revision (the commands that write do this; read-only ones do not)."""
        upgrade(self.engine)

    def require_schema(self) -> None:
        if not schema_is_current(self.engine):
            raise SchemaOutdated("the database schema is not at the newest revision: run `spine-cds migrate` first")

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()
