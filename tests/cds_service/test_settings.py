"""Settings: defaults < file (JSON, YAML, TOML) < SPINE_CDS_* environment < overrides, validated at start."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cds_service import cli
from cds_service.app import create_app
from cds_service.cli import service
from cds_service.settings import Settings, SettingsError, load_settings

ISSUER = "https://EHR.example.org/Auth"  # mixed case: issuer names are case-sensitive URLs
JWKS_URL = "https://ehr.example.org/.well-known/jwks.json"

FILE_VALUES: dict[str, Any] = {
    "snooze_days": 10,
    "jwt_leeway_seconds": 30,
    "fetch_max_pages": 5,
    "public_base_url": "https://cds.example.org/base/",
    "cors_origins": ["https://ehr.example.org"],
    "trusted_issuers": {ISSUER: {"jwks_url": JWKS_URL, "tenants": ["acme"]}},
}

FILE_TEXT = {
    "json": json.dumps(FILE_VALUES),
    "yaml": f"""
snooze_days: 10
jwt_leeway_seconds: 30
fetch_max_pages: 5
public_base_url: https://cds.example.org/base/
cors_origins:
  - https://ehr.example.org
trusted_issuers:
  "{ISSUER}":
    jwks_url: {JWKS_URL}
    tenants: [acme]
""",
    "yml": f"""
SNOOZE_DAYS: 10
JWT_LEEWAY_SECONDS: 30
FETCH_MAX_PAGES: 5
PUBLIC_BASE_URL: https://cds.example.org/base/
CORS_ORIGINS: [https://ehr.example.org]
TRUSTED_ISSUERS: {{"{ISSUER}": {{jwks_url: "{JWKS_URL}", tenants: [acme]}}}}
""",
    "toml": f"""
snooze_days = 10
jwt_leeway_seconds = 30
fetch_max_pages = 5
public_base_url = "https://cds.example.org/base/"
cors_origins = ["https://ehr.example.org"]

[trusted_issuers."{ISSUER}"]
jwks_url = "{JWKS_URL}"
tenants = ["acme"]
""",
}


def settings_file(tmp_path: Path, suffix: str) -> Path:
    path = tmp_path / f"spine-cds.{suffix}"
    path.write_text(FILE_TEXT[suffix], encoding="utf-8")
    return path


def error_of(overrides: dict[str, Any] | None = None, *, environ: dict[str, str] | None = None, file: Path | None = None) -> str:
    with pytest.raises(SettingsError) as raised:
        load_settings(overrides, settings_file=file, environ=environ if environ is not None else {})
    return str(raised.value)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SPINE_CDS_* variable from the machine running the tests leaks into create_app or the CLI."""
    for name in list(os.environ):
        if name.startswith("SPINE_CDS_"):
            monkeypatch.delenv(name)


# ---------------------------------------------------------------------------------------------
# Sources and precedence
# ---------------------------------------------------------------------------------------------


def test_defaults_load_without_file_or_environment() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.snooze_days == 90
    assert settings.snooze_days_by_reason == {"knee-cause-confirmed": 365, "accepted": 180}
    assert settings.jwt_leeway_seconds == 60
    assert settings.jti_ttl_seconds == 3600
    assert settings.trusted_issuers == {}
    assert settings.redis_url is None and settings.public_base_url is None
    assert settings.auto_migrate is True
    assert settings.effective_database_url.startswith("sqlite:///")
    assert settings.effective_database_url.endswith("/instance/spine-cds.sqlite3")


@pytest.mark.parametrize("suffix", ["json", "yaml", "yml", "toml"])
def test_settings_file_overrides_defaults(tmp_path: Path, suffix: str) -> None:
    settings = load_settings(settings_file=settings_file(tmp_path, suffix), environ={})
    assert settings.snooze_days == 10
    assert settings.jwt_leeway_seconds == 30
    assert settings.fetch_max_pages == 5
    assert settings.public_base_url == "https://cds.example.org/base"  # trailing slash dropped
    assert settings.cors_origins == ["https://ehr.example.org"]
    issuer = settings.trusted_issuers[ISSUER]
    assert issuer.jwks_url == JWKS_URL and issuer.jwks is None and issuer.tenants == ["acme"]
    assert settings.jti_ttl_seconds == 3600  # not in the file: the default


def test_settings_file_named_by_environment(tmp_path: Path) -> None:
    path = settings_file(tmp_path, "toml")
    settings = load_settings(environ={"SPINE_CDS_SETTINGS_FILE": str(path)})
    assert settings.snooze_days == 10
    assert ISSUER in settings.trusted_issuers


def test_explicit_settings_file_wins_over_environment_name(tmp_path: Path) -> None:
    named = tmp_path / "named.json"
    named.write_text(json.dumps({"snooze_days": 1}), encoding="utf-8")
    settings = load_settings(settings_file=settings_file(tmp_path, "json"), environ={"SPINE_CDS_SETTINGS_FILE": str(named)})
    assert settings.snooze_days == 10


def test_environment_values_are_parsed_as_json() -> None:
    issuers = {ISSUER: {"jwks": {"keys": []}, "jku_allowlist": ["https://ehr.example.org/jku.json"]}}
    settings = load_settings(
        environ={
            "SPINE_CDS_SNOOZE_DAYS": "30",
            "SPINE_CDS_SNOOZE_DAYS_BY_REASON": '{"patient-declines": 14, "accepted": 0}',
            "SPINE_CDS_FETCH_TIMEOUT_SECONDS": "2.5",
            "SPINE_CDS_AUTO_MIGRATE": "false",
            "SPINE_CDS_TRUSTED_ISSUERS": json.dumps(issuers),
            "SPINE_CDS_CORS_ORIGINS": '["https://a.example.org", "https://b.example.org"]',
            # not JSON: taken as the plain string
            "SPINE_CDS_REDIS_URL": "redis://127.0.0.1:6379/2",
            "SPINE_CDS_PUBLIC_BASE_URL": "https://cds.example.org",
            "SPINE_CDS_LOG_LEVEL": "DEBUG",
            # another program's variables are ignored
            "SPINE_CDSX_SNOOZE_DAYS": "-1",
            "PATH": "/usr/bin",
        }
    )
    assert settings.snooze_days == 30
    assert settings.snooze_days_by_reason == {"knee-cause-confirmed": 365, "patient-declines": 14, "accepted": 0}
    assert settings.fetch_timeout_seconds == 2.5
    assert settings.auto_migrate is False
    assert settings.trusted_issuers[ISSUER].jwks == {"keys": []}
    assert settings.trusted_issuers[ISSUER].jku_allowlist == ["https://ehr.example.org/jku.json"]
    assert settings.cors_origins == ["https://a.example.org", "https://b.example.org"]
    assert settings.redis_url == "redis://127.0.0.1:6379/2"
    assert settings.public_base_url == "https://cds.example.org"
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize("suffix", ["json", "yaml", "toml"])
def test_precedence_defaults_file_environment_overrides(tmp_path: Path, suffix: str) -> None:
    settings = load_settings(
        {"SNOOZE_DAYS": 30},
        settings_file=settings_file(tmp_path, suffix),
        environ={"SPINE_CDS_SNOOZE_DAYS": "20", "SPINE_CDS_JWT_LEEWAY_SECONDS": "40"},
    )
    assert settings.snooze_days == 30  # overrides > environment > file
    assert settings.jwt_leeway_seconds == 40  # environment > file
    assert settings.fetch_max_pages == 5  # file > defaults
    assert settings.jti_ttl_seconds == 3600  # defaults


def test_environment_replaces_a_file_value_whole(tmp_path: Path) -> None:
    """A mapping from a later source replaces the earlier one; issuers are not merged."""
    other = "https://other-ehr.example.org"
    settings = load_settings(
        settings_file=settings_file(tmp_path, "yaml"),
        environ={"SPINE_CDS_TRUSTED_ISSUERS": json.dumps({other: {"jwks_url": JWKS_URL}})},
    )
    assert list(settings.trusted_issuers) == [other]


# ---------------------------------------------------------------------------------------------
# Bad values: SettingsError naming the key
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"SPINE_CDS_SNOOZE_DAYS": "-1"}, "SPINE_CDS_SNOOZE_DAYS"),
        ({"SPINE_CDS_SNOOZE_DAYS": "soon"}, "SPINE_CDS_SNOOZE_DAYS"),
        ({"SPINE_CDS_SNOOZE_DAYS_BY_REASON": '{"no-such-reason": 30}'}, "SPINE_CDS_SNOOZE_DAYS_BY_REASON"),
        ({"SPINE_CDS_SNOOZE_DAYS_BY_REASON": '{"accepted": -1}'}, "SPINE_CDS_SNOOZE_DAYS_BY_REASON.accepted"),
        ({"SPINE_CDS_SNOOZE_DAYS_BY_REASON": '{"accepted": "soon"}'}, "SPINE_CDS_SNOOZE_DAYS_BY_REASON.accepted"),
        ({"SPINE_CDS_SNOOZE_DAYS_BY_REASON": "accepted=30"}, "SPINE_CDS_SNOOZE_DAYS_BY_REASON"),
        ({"SPINE_CDS_SNOOZE_DAYS_BY_REASON": "[30]"}, "SPINE_CDS_SNOOZE_DAYS_BY_REASON"),
        ({"SPINE_CDS_JWT_LEEWAY_SECONDS": "3600"}, "SPINE_CDS_JWT_LEEWAY_SECONDS"),
        ({"SPINE_CDS_JTI_TTL_SECONDS": "10"}, "SPINE_CDS_JTI_TTL_SECONDS"),
        ({"SPINE_CDS_FETCH_TIMEOUT_SECONDS": "0"}, "SPINE_CDS_FETCH_TIMEOUT_SECONDS"),
        ({"SPINE_CDS_MAX_BODY_BYTES": "10"}, "SPINE_CDS_MAX_BODY_BYTES"),
        ({"SPINE_CDS_NOPE": "1"}, "SPINE_CDS_NOPE"),
        ({"SPINE_CDS_TRUSTED_ISSUERS": "not json"}, "SPINE_CDS_TRUSTED_ISSUERS"),
        ({"SPINE_CDS_TRUSTED_ISSUERS": json.dumps({ISSUER: {}})}, "SPINE_CDS_TRUSTED_ISSUERS"),
        ({"SPINE_CDS_TRUSTED_ISSUERS": json.dumps({ISSUER: {"tenants": ["acme"]}})}, "SPINE_CDS_TRUSTED_ISSUERS"),
        (
            {"SPINE_CDS_TRUSTED_ISSUERS": json.dumps({ISSUER: {"jwks_url": JWKS_URL, "jwks": {"keys": []}}})},
            "SPINE_CDS_TRUSTED_ISSUERS",
        ),
        ({"SPINE_CDS_TRUSTED_ISSUERS": json.dumps({ISSUER: {"jwks": {"kty": "EC"}}})}, "SPINE_CDS_TRUSTED_ISSUERS"),
        ({"SPINE_CDS_TRUSTED_ISSUERS": json.dumps({ISSUER: {"jwks_url": JWKS_URL, "jku": "x"}})}, "SPINE_CDS_TRUSTED_ISSUERS"),
        ({"SPINE_CDS_PUBLIC_BASE_URL": "cds.example.org/base"}, "SPINE_CDS_PUBLIC_BASE_URL"),
        ({"SPINE_CDS_PUBLIC_BASE_URL": "/base"}, "SPINE_CDS_PUBLIC_BASE_URL"),
        ({"SPINE_CDS_PUBLIC_BASE_URL": "ftp://cds.example.org"}, "SPINE_CDS_PUBLIC_BASE_URL"),
        ({"SPINE_CDS_SITE": json.dumps({"codes": {"no_such_value_set": []}})}, "SPINE_CDS_SITE"),
        ({"SPINE_CDS_SITE": json.dumps({"suppression_days": -3})}, "SPINE_CDS_SITE"),
        ({"SPINE_CDS_SITE": json.dumps({"colour": "blue"})}, "SPINE_CDS_SITE"),
        ({"SPINE_CDS_LOG_LEVEL": "LOUD"}, "SPINE_CDS_LOG_LEVEL"),
    ],
    ids=lambda value: next(iter(value)) + "=" + next(iter(value.values()))[:20] if isinstance(value, dict) else "",
)
def test_bad_environment_value_names_the_key(environ: dict[str, str], key: str) -> None:
    message = error_of(environ=environ)
    assert key in message


def test_trusted_issuer_error_names_the_issuer_as_configured() -> None:
    message = error_of(environ={"SPINE_CDS_TRUSTED_ISSUERS": json.dumps({ISSUER: {}})})
    assert "SPINE_CDS_TRUSTED_ISSUERS" in message
    assert ISSUER in message
    assert "jwks_url" in message and "jwks" in message


def test_site_error_says_what_is_wrong() -> None:
    message = error_of(environ={"SPINE_CDS_SITE": json.dumps({"codes": {"no_such_value_set": []}})})
    assert "SPINE_CDS_SITE" in message
    assert "no_such_value_set" in message


def test_every_bad_key_is_named_at_once() -> None:
    message = error_of(environ={"SPINE_CDS_SNOOZE_DAYS": "-1", "SPINE_CDS_NOPE": "1"})
    assert "SPINE_CDS_SNOOZE_DAYS" in message and "SPINE_CDS_NOPE" in message


def test_bad_override_and_bad_file_value_name_the_key(tmp_path: Path) -> None:
    assert "SPINE_CDS_SNOOZE_DAYS" in error_of({"snooze_days": -1})
    path = tmp_path / "settings.yaml"
    path.write_text("public_base_url: not-a-url\n", encoding="utf-8")
    assert "SPINE_CDS_PUBLIC_BASE_URL" in error_of(file=path)


def test_snooze_days_by_reason_error_names_the_unknown_key_and_the_known_ones() -> None:
    message = error_of(environ={"SPINE_CDS_SNOOZE_DAYS_BY_REASON": '{"patient-declines": 30, "declined": 30}'})
    assert "SPINE_CDS_SNOOZE_DAYS_BY_REASON" in message
    assert "'declined'" in message and "'patient-declines'" not in message
    for known in ("already-evaluated", "knee-cause-confirmed", "patient-declines", "not-clinically-relevant", "accepted"):
        assert known in message


def test_snooze_days_by_reason_keeps_the_defaults_it_does_not_name() -> None:
    settings = load_settings({"snooze_days_by_reason": {"knee-cause-confirmed": 30}}, environ={})
    assert settings.snooze_days_by_reason == {"knee-cause-confirmed": 30, "accepted": 180}
    every = {
        "already-evaluated": 1,
        "knee-cause-confirmed": 2,
        "patient-declines": 3,
        "not-clinically-relevant": 4,
        "accepted": 0,
    }
    assert load_settings({"snooze_days_by_reason": every}, environ={}).snooze_days_by_reason == every


@pytest.mark.parametrize(
    ("suffix", "content"),
    [
        ("yaml", "snooze_days_by_reason:\n  patient-declines: 14\n  accepted: 0\n"),
        ("toml", "[snooze_days_by_reason]\npatient-declines = 14\naccepted = 0\n"),
        ("json", '{"snooze_days_by_reason": {"patient-declines": 14, "accepted": 0}}'),
    ],
)
def test_snooze_days_by_reason_from_a_settings_file(tmp_path: Path, suffix: str, content: str) -> None:
    path = tmp_path / f"settings.{suffix}"
    path.write_text(content, encoding="utf-8")
    settings = load_settings(settings_file=path, environ={})
    assert settings.snooze_days_by_reason == {"knee-cause-confirmed": 365, "patient-declines": 14, "accepted": 0}


def test_log_level_is_normalised() -> None:
    assert load_settings(environ={"SPINE_CDS_LOG_LEVEL": "debug"}).log_level == "DEBUG"


# ---------------------------------------------------------------------------------------------
# Unusable settings files
# ---------------------------------------------------------------------------------------------


def test_missing_settings_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    message = error_of(file=path)
    assert str(path) in message and "No such file" in message


def test_settings_file_that_is_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.mkdir()
    message = error_of(file=path)
    assert str(path) in message and "directory" in message


def test_settings_file_named_by_environment_missing_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert str(path) in error_of(environ={"SPINE_CDS_SETTINGS_FILE": str(path)})


def test_settings_file_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_bytes("snooze_days: 3\ncomment: caf\u00e9\n".encode("latin-1"))
    message = error_of(file=path)
    assert str(path) in message and "UTF-8" in message


@pytest.mark.parametrize(
    ("suffix", "content"),
    [
        ("json", "{snooze_days: 3"),
        ("yaml", "snooze_days: [3\n"),
        ("toml", "snooze_days = \n"),
        ("yaml", "- a list\n- not a mapping\n"),
        ("json", "[1, 2]"),
        ("yaml", ""),
    ],
)
def test_unparsable_settings_file_is_a_clear_error(tmp_path: Path, suffix: str, content: str) -> None:
    path = tmp_path / f"settings.{suffix}"
    path.write_text(content, encoding="utf-8")
    message = error_of(file=path)
    assert str(path) in message
    assert "cannot be parsed" in message or "expected a mapping" in message


# ---------------------------------------------------------------------------------------------
# Start-up stops on a bad value
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"snooze_days": -1}, "SPINE_CDS_SNOOZE_DAYS"),
        ({"snooze_days_by_reason": {"no-such-reason": 30}}, "SPINE_CDS_SNOOZE_DAYS_BY_REASON"),
        ({"trusted_issuers": {ISSUER: {}}}, "SPINE_CDS_TRUSTED_ISSUERS"),
        ({"site": {"codes": {"no_such_value_set": []}}}, "SPINE_CDS_SITE"),
        ({"log_level": "LOUD"}, "SPINE_CDS_LOG_LEVEL"),
    ],
)
@pytest.mark.usefixtures("clean_environment")
def test_create_app_with_bad_setting_raises_before_serving(tmp_path: Path, config: dict[str, Any], key: str) -> None:
    instance = tmp_path / "instance"
    with pytest.raises(SettingsError) as raised:
        create_app({"instance_path": str(instance), **config})
    assert key in str(raised.value)
    assert not instance.exists()  # nothing was set up: no instance folder, no database


@pytest.mark.usefixtures("clean_environment")
def test_create_app_reads_environment_under_its_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINE_CDS_SNOOZE_DAYS", "-5")
    with pytest.raises(SettingsError, match="SPINE_CDS_SNOOZE_DAYS"):
        create_app({"instance_path": str(tmp_path / "instance")})
    app = create_app({"instance_path": str(tmp_path / "instance"), "snooze_days": 7})
    assert app.extensions["spine_cds"].settings.snooze_days == 7


class ExecRecorder:
    """Stands in for os.execvp in the CLI: records the command instead of replacing the process."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, file: str, args: list[str]) -> None:
        self.calls.append((file, args))


@pytest.fixture
def exec_recorder(monkeypatch: pytest.MonkeyPatch) -> ExecRecorder:
    recorder = ExecRecorder()
    monkeypatch.setattr(service.os, "execvp", recorder)
    return recorder


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"SPINE_CDS_SNOOZE_DAYS": "-5"}, "SPINE_CDS_SNOOZE_DAYS"),
        ({"SPINE_CDS_SNOOZE_DAYS_BY_REASON": '{"no-such-reason": 30}'}, "SPINE_CDS_SNOOZE_DAYS_BY_REASON"),
        ({"SPINE_CDS_NOPE": "1"}, "SPINE_CDS_NOPE"),
        ({"SPINE_CDS_LOG_LEVEL": "LOUD"}, "SPINE_CDS_LOG_LEVEL"),
    ],
)
def test_serve_with_bad_environment_exits_before_gunicorn(
    tmp_path: Path, exec_recorder: ExecRecorder, env: dict[str, str], key: str
) -> None:
    instance = tmp_path / "instance"
    result = CliRunner().invoke(cli.main, ["serve", "--workers", "1"], env={**env, "SPINE_CDS_INSTANCE_PATH": str(instance)})
    assert result.exit_code != 0
    assert key in result.output
    assert "Traceback" not in result.output
    assert exec_recorder.calls == []  # gunicorn never started
    assert not instance.exists()  # no database was migrated


@pytest.mark.usefixtures("clean_environment")
def test_serve_with_good_environment_reaches_gunicorn(tmp_path: Path, exec_recorder: ExecRecorder) -> None:
    """The counterpart of the failure above: the same command with usable settings does start gunicorn."""
    instance = tmp_path / "instance"
    env: dict[str, str | None] = {
        "SPINE_CDS_SNOOZE_DAYS": "5",
        "SPINE_CDS_INSTANCE_PATH": str(instance),
        "SPINE_CDS_AUTO_MIGRATE": None,  # serve sets it for its workers; restored after the run
    }
    result = CliRunner().invoke(cli.main, ["serve", "--workers", "1", "--port", "8999"], env=env)
    assert result.exit_code == 0, result.output
    [(_, argv)] = exec_recorder.calls
    assert "gunicorn" in argv and "cds_service.wsgi:app" in argv
    assert (instance / "spine-cds.sqlite3").exists()  # migrated once before the workers
