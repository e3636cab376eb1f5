from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from loraforge import __version__
from loraforge.cli import app, main


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command and group under `group` (typer's own click: its classes are not click's)."""
    found: list[tuple[tuple[str, ...], Any]] = []
    for name, command in sorted(group.commands.items()):
        found.append(((*path, name), command))
        if isinstance(command, typer.core.TyperGroup):
            found += _commands(command, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def test_the_command_list_is_read_from_the_app() -> None:
    leaves = {path for path, command in COMMANDS if not isinstance(command, typer.core.TyperGroup)}
    assert {("train",), ("distill",), ("config", "check"), ("models", "show"), ("docs", "cli")} <= leaves
    assert len(leaves) >= 12


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
def test_every_command_has_help(
    path: tuple[str, ...], command: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps help to the terminal; keep each option on one line
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage" in out
    options = [opt for param in command.params if param.param_type_name == "option" for opt in param.opts]
    assert [opt for opt in options if opt not in out] == []


def test_help_imports_neither_torch_nor_transformers() -> None:
    """`loraforge --help` and every command's help load the CLI only: torch, transformers and peft
    are imported by the commands that run models (it took 12.6 s on a 2-core CPU; 0.7 s without)."""
    code = "import sys, loraforge.cli; print(sorted({'torch', 'transformers', 'peft'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_init_writes_a_config_that_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "hello"}\n')
    config = tmp_path / "run.yaml"
    assert main(["init", str(config), "--train", str(train)]) == 0
    written = yaml.safe_load(config.read_text())
    assert written["lora"]["r"] == 16 and written["train"]["lr"] == 2e-4
    assert main(["config", "check", str(config), "--set", "lora.r=8"]) == 0
    assert "r: 8" in capsys.readouterr().out


def test_bad_config_gets_every_problem_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("data:\n  train: missing.jsonl\nlora:\n  r: 0\n  alpah: 3\n")
    assert main(["config", "check", str(config)]) == 2
    err = capsys.readouterr().err
    assert "lora.r" in err and "did you mean 'lora.alpha'" in err and "data.train: file not found" in err
    assert "Traceback" not in err


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = tmp_path / "t.jsonl"
    train.write_text('{"text": "x"}\n')
    config = tmp_path / "c.yaml"
    config.write_text("keep: me\n")
    assert main(["init", str(config), "--train", str(train)]) == 2
    assert config.read_text() == "keep: me\n"
    assert "--force" in capsys.readouterr().err


def test_models_show_prints_the_card(tiny_base_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "show", str(tiny_base_dir), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["architecture"] == "LlamaForCausalLM"
    assert card["linear_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert card["fingerprint"].startswith("sha256:")


def test_missing_base_exits_2_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "show", "/nope/model"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_usage_error_is_one_message_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    assert main(["train"]) == 2  # missing CONFIG
    err = capsys.readouterr().err
    assert "Traceback" not in err and "No such command" in err
