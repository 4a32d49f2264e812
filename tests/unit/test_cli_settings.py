"""Command-line flags over the environment over the settings file over the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcnode.cli import _parser, _settings
from qcnode.config import Settings


def settings_for(argv: list[str]) -> Settings:
    return _settings(_parser().parse_args(argv))


def test_ingest_processes_flag_wins_over_env_over_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QCNODE_INGEST_PROCESSES", raising=False)
    assert settings_for(["serve"]).ingest_processes == Settings().ingest_processes == 1
    toml = tmp_path / "qcnode.toml"
    toml.write_text("[node]\ningest_processes = 3\n")
    assert settings_for(["serve", "--config", str(toml)]).ingest_processes == 3
    monkeypatch.setenv("QCNODE_INGEST_PROCESSES", "4")
    assert settings_for(["serve", "--config", str(toml)]).ingest_processes == 4
    flagged = ["serve", "--config", str(toml), "--ingest-processes", "2"]
    assert settings_for(flagged).ingest_processes == 2


def test_ingest_processes_flag_takes_a_number() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--ingest-processes", "two"])
    with pytest.raises(SystemExit):  # serve's flag only
        _parser().parse_args(["worker", "--ingest-processes", "2"])
