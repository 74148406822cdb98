"""The database engine and schema migrations (Alembic, cds_service/migrations); each feature's tables live with it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg.errors import _WaitTimeout  # psycopg's own signal that a bounded wait ran out
from sqlalchemy import (
    create_engine,
    event,
)
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql.elements import ClauseElement

MIGRATIONS = Path(__file__).with_name("migrations")


class Base(DeclarativeBase):
    pass


def width(column: Any) -> int:
    """A String column's length, so what must fit a column is bounded by its declaration and nothing else."""
    length: int = column.property.columns[0].type.length
    return length


def utcnow() -> datetime:
    return datetime.now(UTC)



def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # with WAL, NORMAL keeps the file consistent on power loss; production logs go to PostgreSQL
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # SQLAlchemy issues BEGIN itself (below), so the driver must not open transactions of its own
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection: Connection) -> None:
    # take the write lock up front: chain appends read the head and extend it in one serialised step
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, round_trip_seconds: float | None = None) -> Engine:
    """The engine for a database URL. With `round_trip_seconds` (the web service's), no PostgreSQL round
    trip (a statement, a fetch, a commit) waits longer for the server: past it the connection is closed
    and the call fails as "database unavailable" (503) instead of hanging on a stalled server."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, json_serializer=json_text)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    # no pre-ping: it costs a round trip per request; a dropped connection fails one request and is replaced.
    # A database that is down answers within the connect timeout, and a full pool within pool_timeout: both
    # become a 503 with Retry-After, never a request held for half a minute
    engine = create_engine(
        url,
        pool_size=5,
        max_overflow=5,
        pool_recycle=1800,
        pool_timeout=2,
        connect_args={"connect_timeout": 2},
        json_serializer=json_text,
    )
    if round_trip_seconds is not None:

        @event.listens_for(engine, "do_connect")
        def _bounded_connect(_dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> psycopg.Connection[Any]:
            connection = RoundTripBoundConnection.connect(*cargs, **cparams)
            connection.round_trip_seconds = round_trip_seconds
            return connection

    return engine


class RoundTripBoundConnection(psycopg.Connection[Any]):
    """A psycopg connection whose round trips each wait at most `round_trip_seconds` for the server.

    A stopped or wedged server (the host still accepting bytes into its socket buffers) would otherwise hold
    the request, and the pooled connection, for as long as it stays stopped: TCP keepalives and libpq's
    timeouts do not notice, and a server-side statement_timeout needs a server that runs. Every statement,
    fetch and commit passes through `wait`, which psycopg bounds when given a timeout."""

    round_trip_seconds: float | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        bound = timeout if timeout is not None else self.round_trip_seconds
        try:
            return super().wait(gen, interval=interval, timeout=bound)
        except _WaitTimeout as stalled:
            if timeout is not None:
                raise  # a caller's own timeout is the caller's to handle
            # the server may still answer this round trip later: the connection cannot be reused
            self.close()
            raise psycopg.OperationalError(f"the database did not answer within {bound:g} s") from stalled


@dataclass(frozen=True)
class DriverStatement:
    """A statement compiled once to the driver's SQL, with the values of its constant parameters, for the
    paths where SQLAlchemy's per-execution work is the larger part of the cost (bench/README.md)."""

    sql: str
    constants: dict[str, Any]
    positions: tuple[str, ...] | None  # the parameter names in order, for drivers with positional parameters

    @classmethod
    def of(cls, statement: ClauseElement, dialect: Dialect) -> DriverStatement:
        compiled = statement.compile(dialect=dialect)
        order = getattr(compiled, "positiontup", None)  # set by SQL compilers for positional drivers
        positions = tuple(order) if dialect.positional and order else None
        # named parameters have no value here: left out, so a call that forgets one fails loudly
        return cls(str(compiled), {k: v for k, v in compiled.params.items() if v is not None}, positions)

    def execute(self, cursor: Any, parameters: dict[str, Any]) -> None:
        values = {**self.constants, **parameters}
        cursor.execute(self.sql, [values[name] for name in self.positions] if self.positions else values)


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def schema_is_current(engine: Engine) -> bool:
    """Whether the database is at the newest Alembic revision (read only: nothing is created)."""
    heads = set(ScriptDirectory.from_config(_alembic_config()).get_heads())
    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads()) == heads


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def json_text(value: Any) -> str:
    """JSON columns' serialisation, shared with the decision log's driver-level statements."""
    return orjson.dumps(value).decode()
