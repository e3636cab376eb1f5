"""Signing from the CLI (`keygen`, `sign`, `verify`) and from a run: ship.key signs an adapter that passed."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from run_configs import _config, _raw, _write_config

from loraforge.cli import main
from loraforge.errors import SigningKeyError
from loraforge.pipeline.run import train_and_gate
from loraforge.ship.signing import SIGNATURE_NAME, generate_keypair, verify_adapter


def test_cli_keygen_sign_verify(adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    keys = tmp_path / "keys"
    assert main(["keygen", str(keys)]) == 0
    assert stat.S_IMODE((keys / "private.pem").stat().st_mode) == 0o600
    assert main(["sign", str(adapter), "--key", str(keys / "private.pem")]) == 0
    assert (adapter / SIGNATURE_NAME).is_file()
    capsys.readouterr()
    assert main(["verify", str(adapter), "--pub", str(keys / "public.pem"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verified"] is True and "adapter_model.safetensors" in result["files"]


def test_cli_verify_exits_4_naming_the_changed_file(
    adapter: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    private, public = generate_keypair(tmp_path / "keys")
    assert main(["sign", str(adapter), "--key", str(private)]) == 0
    (adapter / "adapter_config.json").write_text("{}\n")
    capsys.readouterr()
    assert main(["verify", str(adapter), "--pub", str(public), "--json"]) == 4
    captured = capsys.readouterr()
    failure = json.loads(captured.out)
    assert (failure["verified"], failure["reason"], failure["changed"]) == (
        False,
        "files_differ",
        ["adapter_config.json"],
    )
    assert "changed: adapter_config.json" in captured.err and "Traceback" not in captured.err


def test_cli_keygen_refuses_to_overwrite_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", str(tmp_path / "keys")]) == 0
    assert main(["keygen", str(tmp_path / "keys")]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["keygen", str(tmp_path / "keys"), "--force"]) == 0


def test_cli_password_comes_from_the_named_environment_variable(
    adapter: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = tmp_path / "keys"
    assert main(["keygen", str(keys), "--password-env", "LF_TEST_KEY_PASSWORD"]) == 2  # unset: refused
    assert "LF_TEST_KEY_PASSWORD" in capsys.readouterr().err
    monkeypatch.setenv("LF_TEST_KEY_PASSWORD", "s3cret")
    assert main(["keygen", str(keys), "--password-env", "LF_TEST_KEY_PASSWORD"]) == 0
    assert main(["sign", str(adapter), "--key", str(keys / "private.pem")]) == 2  # encrypted, no password
    assert (
        main(["sign", str(adapter), "--key", str(keys / "private.pem"), "--password-env", "LF_TEST_KEY_PASSWORD"]) == 0
    )
    assert verify_adapter(adapter, keys / "public.pem").files


def test_train_with_ship_key_signs_the_adapter_after_a_pass(
    tiny_base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = generate_keypair(tmp_path / "keys")
    raw = _raw(tmp_path, tiny_base_dir)
    raw["ship"] = {"key": str(private)}
    assert main(["train", str(_write_config(tmp_path, raw))]) == 0
    adapter_dir = tmp_path / "run" / "adapter"
    printed = "".join(capsys.readouterr().out.split())  # rich wraps a long path mid-name
    assert f"adaptersigned:{adapter_dir / SIGNATURE_NAME}" in printed
    result = verify_adapter(adapter_dir, public)
    assert {"adapter_model.safetensors", "adapter_config.json", "loraforge.json"} <= set(result.files)
    manifest = json.loads((adapter_dir / "loraforge.json").read_text())
    assert manifest["eval"]["verdict"] == "pass"  # the signature covers the manifest with the verdict in it


def test_a_blocked_gate_leaves_the_adapter_unsigned(tiny_base_dir: Path, tmp_path: Path) -> None:
    private, _ = generate_keypair(tmp_path / "keys")
    raw = _raw(tmp_path, tiny_base_dir)
    raw["ship"] = {"key": str(private)}
    raw["eval"]["min_pass_rate"] = {"golden": 1.0}  # a two-step tiny model answers none of them
    outcome = train_and_gate(_config(raw))
    assert outcome.blocked
    assert outcome.signature is None
    assert not (outcome.train.adapter_dir / SIGNATURE_NAME).exists()


def test_train_without_ship_key_says_the_adapter_is_unsigned(
    tiny_base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(_write_config(tmp_path, _raw(tmp_path, tiny_base_dir)))]) == 0
    assert "adapter not signed (set ship.key to sign)" in capsys.readouterr().out
    assert not (tmp_path / "run" / "adapter" / SIGNATURE_NAME).exists()


def test_a_missing_key_password_fails_before_training(
    tiny_base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private, _ = generate_keypair(tmp_path / "keys", password=b"s3cret")
    raw = _raw(tmp_path, tiny_base_dir)
    raw["ship"] = {"key": str(private), "password_env": "LF_TEST_SHIP_PASSWORD"}
    monkeypatch.delenv("LF_TEST_SHIP_PASSWORD", raising=False)
    with pytest.raises(SigningKeyError, match="ship.password_env LF_TEST_SHIP_PASSWORD"):
        train_and_gate(_config(raw))
    assert not (tmp_path / "run").exists()


def test_config_check_names_a_missing_ship_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = _raw(tmp_path, tmp_path)
    raw["ship"] = {"key": str(tmp_path / "nope.pem")}
    assert main(["config", "check", str(_write_config(tmp_path, raw))]) == 2
    assert "ship.key: file not found" in capsys.readouterr().err
