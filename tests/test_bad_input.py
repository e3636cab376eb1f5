"""Bad input through the real CLI: one message that names the file and the fix, exit 2, no
traceback, nothing half-written. The table is docs/troubleshooting.md#bad-input."""

from __future__ import annotations

import io
import json
import shutil
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from loraforge.cli import main
from loraforge.files import sha256_file


@dataclass(frozen=True)
class Case:
    argv: list[str]
    stdin: str | None = None


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])  # past the 8-byte length, inside the JSON header


def _damaged_copy(src: Path, dst: Path, weights: str) -> Path:
    shutil.copytree(src, dst)
    _truncate(dst / weights)
    return dst


def _config(tmp_path: Path, base: str | Path, **sections: object) -> Path:
    train = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"order {i} broke"}, {"role": "assistant", "content": "ok"}]}
            for i in range(12)]  # fmt: skip
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"train": str(train), "replay": None}  # bad input, not replay, is under test
    raw = {"base": str(base), "output": str(tmp_path / "run"), "data": data, **sections}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _adapter(tmp_path: Path, base_dir: Path) -> Path:
    from manifests import valid_manifest

    from loraforge.config import LoraSpec
    from loraforge.models import attach_lora, load_base, save_adapter

    base = load_base(str(base_dir))
    return save_adapter(attach_lora(base.model, LoraSpec(r=2)), tmp_path / "adapter", valid_manifest(base.fingerprint))


def corrupt_base(tmp_path: Path, base_dir: Path) -> Case:
    return Case(["models", "show", str(_damaged_copy(base_dir, tmp_path / "base", "model.safetensors"))])


def corrupt_adapter(tmp_path: Path, base_dir: Path) -> Case:
    adapter = _adapter(tmp_path, base_dir)
    _truncate(adapter / "adapter_model.safetensors")
    return Case(["eval", str(_config(tmp_path, base_dir)), "--adapter", str(adapter)])


def corrupt_against(tmp_path: Path, base_dir: Path) -> Case:
    adapter = _adapter(tmp_path, base_dir)
    against = _damaged_copy(adapter, tmp_path / "against", "adapter_model.safetensors")
    config = _config(tmp_path, base_dir, eval={"probes": ["general"], "max_new_tokens": 2})
    return Case(["eval", str(config), "--adapter", str(adapter), "--against", str(against)])


def corrupt_checkpoint(tmp_path: Path, base_dir: Path) -> Case:
    config = _config(tmp_path, base_dir, train={"max_steps": 2, "micro_batch_size": 2, "grad_accum": 1})
    assert main(["train", str(config)]) == 0
    checkpoints = sorted((tmp_path / "run" / "checkpoints").iterdir())
    _truncate(checkpoints[-1] / "adapter" / "adapter_model.safetensors")
    return Case(["train", str(config), "--resume"])


def base_without_tokenizer(tmp_path: Path, base_dir: Path) -> Case:
    base = tmp_path / "base"
    shutil.copytree(base_dir, base, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    return Case(["models", "show", str(base)])


def truncated_gguf(tmp_path: Path, base_dir: Path) -> Case:
    gguf = tmp_path / "m.gguf"
    # magic, version 3, one tensor, one key/value, then the key's length and nothing more
    gguf.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 1, 1, 40) + b"general.arch")
    return Case(["models", "show", str(gguf)])


def set_without_key(tmp_path: Path, base_dir: Path) -> Case:
    return Case(["config", "check", str(_config(tmp_path, base_dir)), "--set", "=3"])


def set_dot_key(tmp_path: Path, base_dir: Path) -> Case:
    return Case(["config", "check", str(_config(tmp_path, base_dir)), "--set", ".=3"])


def unknown_model_type(tmp_path: Path, base_dir: Path) -> Case:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "foo", "hidden_size": 64}))
    return Case(["plan", str(_config(tmp_path, base)), "--tokens", "1000"])


def distill_not_utf8(tmp_path: Path, base_dir: Path) -> Case:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(b'{"prompt": "hello"}\n{"prompt": "caf\xe9"}\n')
    return Case(["distill", str(prompts), "--out", str(tmp_path / "replay.jsonl"), "--base", str(base_dir)])


# (builder, what stderr must say); every one exits 2 without a traceback and writes nothing
TABLE: list[tuple[Callable[[Path, Path], Case], list[str]]] = [
    (corrupt_base, ["model.safetensors", "truncated or corrupt", "download or convert the base again"]),
    (corrupt_adapter, ["adapter", "truncated or corrupt", "copy the adapter again"]),
    (corrupt_against, ["against", "truncated or corrupt", "copy the adapter again"]),
    (corrupt_checkpoint, ["checkpoints/step-", "cannot read the checkpoint", "without --resume"]),
    (base_without_tokenizer, ["no tokenizer files", "tokenizer.json", "save_pretrained"]),
    (truncated_gguf, ["m.gguf", "cannot convert this GGUF", "download it again"]),
    (set_without_key, ["--set '=3'", "no key before '='"]),
    (set_dot_key, ["--set '.=3'", "no key before '='"]),
    (unknown_model_type, ["config.json", "model_type 'foo'", "fix model_type"]),
    (distill_not_utf8, ["prompts.jsonl line 2", "not UTF-8 (byte 0xe9", "re-save the file as UTF-8"]),
]


def _files(root: Path) -> dict[str, str]:
    """Each file's bytes by hash: a file rewritten with the same bytes is not a change."""
    return {str(p.relative_to(root)): sha256_file(p) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("build", "phrases"), TABLE, ids=[build.__name__ for build, _ in TABLE])
def test_bad_input_gets_one_message_with_the_fix_and_exit_2(
    build: Callable[[Path, Path], Case],
    phrases: list[str],
    tiny_base_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one message per line: the phrases are not wrapped apart
    monkeypatch.setenv("LORAFORGE_HOME", str(tmp_path / "home"))
    case = build(tmp_path, tiny_base_dir)
    before = _files(tmp_path)
    capsys.readouterr()
    assert main(case.argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert [p for p in phrases if p not in err] == [], err
    assert "Traceback" not in err
    written = {name for name, digest in _files(tmp_path).items() if before.get(name) != digest}
    assert {name for name in written if not name.startswith("home/")} == set()
    assert not (tmp_path / "home" / "bases").exists() or not any((tmp_path / "home" / "bases").iterdir())


def test_a_non_integer_example_count_is_asked_again(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("behaviour\ndemonstrations\n1 24\nlots\n5,000\n"))
    assert main(["advise", "--interactive"]) == 0
    out = capsys.readouterr().out
    assert "'lots' is not a whole number of examples" in out and "method: sft-dora" in out


def test_a_damaged_data_cache_entry_is_rebuilt_with_a_warning(
    tiny_base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAFORGE_HOME", str(tmp_path / "home"))
    config = _config(tmp_path, tiny_base_dir)
    assert main(["prepare", str(config)]) == 0
    (entry,) = (tmp_path / "home" / "cache" / "data").iterdir()
    (entry / "tokens.npz").write_bytes(b"PK\x03\x04 not a zip any more")
    with pytest.warns(UserWarning, match="damaged data cache entry.*tokenizing again"):
        assert main(["prepare", str(config)]) == 0
    with (entry / "tokens.npz").open("rb") as handle:
        assert handle.read(4) == b"PK\x03\x04" and len(handle.read()) > 100  # rewritten whole
    assert json.loads((tmp_path / "run" / "data_report.json").read_text())["cached"] is False
    assert main(["prepare", str(config)]) == 0
    assert json.loads((tmp_path / "run" / "data_report.json").read_text())["cached"] is True
