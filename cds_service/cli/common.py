"""What the commands share: the settings, and the runtime built from them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from cds_service.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from cds_service.runtime import Runtime


def settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def open_runtime(*, migrate: bool) -> Runtime:
    """The runtime of the configured settings (close it, or use it in a `with` block). Commands that write
    bring the schema up to date first; read-only ones only check it, and change nothing."""
    from cds_service.runtime import Runtime, SchemaOutdated  # the database stack, loaded by the commands that use it

    runtime = Runtime(settings())
    try:
        if migrate:
            runtime.migrate()
        else:
            runtime.require_schema()
    except SchemaOutdated as exc:
        runtime.close()
        raise click.ClickException(str(exc)) from None
    return runtime
