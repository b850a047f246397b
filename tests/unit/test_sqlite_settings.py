"""``sqlite:`` URLs and SqliteSettings: absolute and relative spellings, options, and what is refused."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from hexq.adapters.sqlite import SqliteBroker, SqliteSettings
from hexq.core.errors import ConfigError


def test_three_slashes_is_an_absolute_path() -> None:
    settings = SqliteSettings.from_url("sqlite:///var/lib/hexq/hexq.db")
    assert settings == SqliteSettings("/var/lib/hexq/hexq.db")
    assert settings.url == "sqlite:///var/lib/hexq/hexq.db" and settings.scheme == "sqlite"
    assert SqliteSettings.from_url("sqlite://localhost/var/lib/hexq/hexq.db").path == "/var/lib/hexq/hexq.db"


def test_no_slash_is_relative_to_the_working_directory_and_resolved_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = SqliteSettings.from_url("sqlite:data/hexq.db")
    assert settings.path == str(tmp_path / "data" / "hexq.db")
    monkeypatch.chdir("/")
    assert settings.path == str(tmp_path / "data" / "hexq.db")  # a later chdir changes nothing


def test_escapes_and_options() -> None:
    settings = SqliteSettings.from_url("sqlite:///srv/my%20queue/hexq.db?busy_timeout=0.5&synchronous=full")
    assert settings == SqliteSettings("/srv/my queue/hexq.db", busy_timeout=0.5, synchronous="FULL")
    assert SqliteSettings.from_url(settings.url) == SqliteSettings("/srv/my queue/hexq.db")


@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite://hexq.db", "names a host"),
    ("sqlite://", "names no file"),
    ("sqlite:///srv/", "names no file"),
    ("redis://localhost/0", "not an SQLite URL"),
    ("sqlite:///a.db?timeout=3", "unknown option"),
    ("sqlite:///a.db?busy_timeout=soon", "busy_timeout must be a number"),
    ("sqlite:///a.db?busy_timeout=-1", "busy_timeout must be"),
    ("sqlite:///a.db?synchronous=OFF", "synchronous must be one of"),
])
def test_bad_urls_are_refused_with_the_fix(url: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        SqliteSettings.from_url(url)


def test_settings_take_only_an_absolute_path() -> None:
    with pytest.raises(ConfigError, match="must be an absolute path"):
        SqliteSettings("hexq.db")


def test_each_process_logs_the_absolute_path_once(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first, second = SqliteBroker.from_url("sqlite:logged.db"), SqliteBroker.from_url("sqlite:logged.db")
    try:
        with caplog.at_level(logging.INFO, logger="hexq.sqlite"):
            first.queue_stats(["default"])
            second.queue_stats(["default"])
        opened = [r.getMessage() for r in caplog.records if "SQLite database" in r.getMessage()]
        assert opened == [f"hexq broker: SQLite database {tmp_path / 'logged.db'} (journal wal, synchronous NORMAL)"]
        assert os.path.isabs(str(tmp_path / "logged.db"))
    finally:
        first.close()
        second.close()
