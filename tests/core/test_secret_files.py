"""Credentials from mounted files (`<NAME>_FILE`): what the chart's pods rely on instead of secrets in env."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.secret_files import load_secret_files
from core.settings import load_settings


def test_file_values_become_the_variables_clients_read(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("AKIA-from-file\n")  # a Secret's file may end in a newline
    (tmp_path / "pw").write_text("s3cr3t")
    env = {"AWS_ACCESS_KEY_ID_FILE": str(tmp_path / "key"), "PGPASSWORD_FILE": str(tmp_path / "pw")}
    assert load_secret_files(env) == ["AWS_ACCESS_KEY_ID", "PGPASSWORD"]
    assert env["AWS_ACCESS_KEY_ID"] == "AKIA-from-file" and env["PGPASSWORD"] == "s3cr3t"
    assert "AWS_SECRET_ACCESS_KEY" not in env


def test_an_explicit_variable_wins_and_unlisted_file_vars_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("from-file")
    env = {"AWS_ACCESS_KEY_ID": "explicit", "AWS_ACCESS_KEY_ID_FILE": str(tmp_path / "key"),
           "RECSYS_SETTINGS_FILE": str(tmp_path / "key")}
    assert load_secret_files(env) == []
    assert env["AWS_ACCESS_KEY_ID"] == "explicit" and "RECSYS_SETTINGS" not in env


@pytest.mark.parametrize(("content", "message"), [(None, "cannot read it"), ("  \n", "the file is empty")])
def test_a_missing_or_empty_file_is_a_config_error(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "pw"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=f"PGPASSWORD_FILE={path}: {message}"):
        load_secret_files({"PGPASSWORD_FILE": str(path)})


def test_load_settings_loads_them_into_the_process_environment(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "secret").write_text("from-settings-load")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "")  # unset for the loader; restored (removed) afterwards
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY_FILE", str(tmp_path / "secret"))
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    load_settings()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "from-settings-load"


def test_the_exec_wrapper_hands_the_loaded_values_to_another_program(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("pg-pass\n")
    env = {"PATH": "/usr/bin:/bin", "PGPASSWORD_FILE": str(tmp_path / "pw")}
    res = subprocess.run([sys.executable, "-m", "core.secret_files", "sh", "-c", 'printf %s "$PGPASSWORD"'],
                         capture_output=True, text=True, env=env, timeout=60, cwd=Path(__file__).parents[2])
    assert res.returncode == 0 and res.stdout == "pg-pass", res.stderr
    env["PGPASSWORD_FILE"] = str(tmp_path / "missing")
    res = subprocess.run([sys.executable, "-m", "core.secret_files", "sh", "-c", "echo ran"],
                         capture_output=True, text=True, env=env, timeout=60, cwd=Path(__file__).parents[2])
    assert res.returncode == 2 and "ran" not in res.stdout
    assert res.stderr.strip().splitlines() == [f"error: PGPASSWORD_FILE={tmp_path / 'missing'}: cannot read it "
                                               "(No such file or directory)"]
