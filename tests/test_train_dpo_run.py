"""`loraforge train` with train.method: dpo on the tiny base: it trains on a pairs file, writes a
manifest and gates the adapter like SFT, resumes after kill -9 to the same bytes, and refuses a
malformed pairs file with line numbers before writing anything.

The resume worker is `python -m loraforge train`, a real separate process, as a user runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from loraforge.cli import main
from loraforge.models import read_manifest

WEIGHTS = "adapter_model.safetensors"


def _pairs(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "id": f"p-{i}",
            "prompt": [{"role": "user", "content": f"where is order {1000 + i} and when does it arrive"}],
            "chosen": f"Order {1000 + i} ships today and arrives on day {i % 7 + 1}. Thanks!",
            "rejected": "dunno" + " ok" * (i % 4),
        }
        for i in range(start, start + n)
    ]


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _config(tmp_path: Path, base: Path, out: str = "run", **train: Any) -> Path:
    golden = {
        "id": "g-1",
        "messages": [
            {"role": "user", "content": "which day does parcel 77 arrive"},
            {"role": "assistant", "content": "day 3"},
        ],
        "checks": [{"type": "regex", "pattern": ""}],
    }
    raw = {
        "base": str(base),
        "output": str(tmp_path / out),
        "data": {
            "train": str(_write(tmp_path / "pairs.jsonl", _pairs(40))),
            "eval": str(_write(tmp_path / "eval_pairs.jsonl", _pairs(8, start=500))),
            "golden": str(_write(tmp_path / "golden.jsonl", [golden])),
        },
        "lora": {"r": 8, "alpha": 16},
        "train": {
            "method": "dpo",
            "lr": 5e-3,
            "warmup_ratio": 0.0,
            "epochs": 2,
            "eval_every": 0.5,
            "micro_batch_size": 4,
            "grad_accum": 2,
            "precision": "fp32",
            **train,
        },  # fmt: skip
        "eval": {"max_new_tokens": 4, "probes": [], "precision": "fp32"},
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return path


def test_a_dpo_run_trains_on_pairs_and_is_gated(tiny_base_dir: Path, tmp_path: Path) -> None:
    assert main(["train", str(_config(tmp_path, tiny_base_dir))]) == 0
    run = tmp_path / "run"
    manifest = read_manifest(run / "adapter")
    assert manifest is not None and manifest["eval"]["verdict"] == "pass"
    assert manifest["config"]["train"]["method"] == "dpo" and manifest["lora"]["dropout"] == 0.0
    assert manifest["data"]["rows"]["train"] == 40 and manifest["data"]["rows"]["eval"] == 8
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["event"] == "eval"]
    assert evals[-1]["eval_accuracy"] > 0.5 and evals[-1]["eval_margin"] > 0
    report = json.loads((run / "data_report.json").read_text())
    assert report["kind"] == "preference_pairs"
    assert (run / "eval" / "report.json").is_file() and (run / "loss.png").is_file()


def test_a_malformed_pairs_file_is_refused_with_line_numbers_and_nothing_written(
    tiny_base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, tiny_base_dir, out="bad")
    bad = [*_pairs(3), {"prompt": "hi", "chosen": "same", "rejected": "same"}, "{not json"]
    _write(tmp_path / "pairs.jsonl", bad)
    assert main(["train", str(config)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "pairs.jsonl line 4" in err and "pairs.jsonl line 5" in err
    assert "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def _spawn(config: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same kernels and reduction order in every run
    cmd = [sys.executable, "-m", "loraforge", "train", str(config), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_killed_dpo_run_resumes_to_the_same_adapter_bytes(tiny_base_dir: Path, tmp_path: Path) -> None:
    straight = _spawn(_config(tmp_path, tiny_base_dir, out="straight", epochs=4))
    assert straight.wait(timeout=300) == 0, straight.stderr and straight.stderr.read()
    config = _config(tmp_path, tiny_base_dir, out="killed", epochs=4)
    victim = _spawn(config)
    deadline = time.monotonic() + 240
    while victim.poll() is None and time.monotonic() < deadline:
        if any((p / "state.json").is_file() for p in (tmp_path / "killed" / "checkpoints").glob("step-*")):
            break
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (tmp_path / "killed" / "adapter").exists(), "the run finished before the kill"
    resumed = _spawn(config, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr and resumed.stderr.read()
    expected = (tmp_path / "straight" / "adapter" / WEIGHTS).read_bytes()
    assert (tmp_path / "killed" / "adapter" / WEIGHTS).read_bytes() == expected


def _sft_adapter(base_dir: Path, out: Path, fingerprint: str | None = None) -> Path:
    """A rank-2 adapter with non-zero weights and a manifest (what an SFT run leaves in OUTPUT/adapter)."""
    import torch
    from manifests import valid_manifest

    from loraforge.config import LoraSpec
    from loraforge.models import attach_lora, load_base, save_adapter

    base = load_base(str(base_dir))
    model = attach_lora(base.model, LoraSpec(r=2, alpha=4, dropout=0.1))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    save_adapter(model, out, valid_manifest(fingerprint or base.fingerprint))
    return out


def test_dpo_on_top_of_an_adapter_starts_from_it_uses_it_as_reference_and_keeps_its_shape(
    tiny_base_dir: Path, tmp_path: Path
) -> None:
    sft = _sft_adapter(tiny_base_dir, tmp_path / "sft")
    assert main(["train", str(_config(tmp_path, tiny_base_dir, out="on-sft", init_adapter=str(sft)))]) == 0
    run = tmp_path / "on-sft"
    manifest = read_manifest(run / "adapter")
    assert manifest is not None and manifest["eval"]["verdict"] == "pass"
    assert (manifest["lora"]["r"], manifest["lora"]["alpha"], manifest["lora"]["dropout"]) == (2, 4.0, 0.0)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["event"] == "train")
    # the first step is scored before any update: policy == reference == the SFT adapter, so no drift
    # (against the bare base, this adapter's answers differ by whole nats: see the next assertion)
    assert abs(first["chosen_drift"]) < 1e-3 and abs(first["rejected_drift"]) < 1e-3
    from safetensors.torch import load_file

    start, end = load_file(sft / WEIGHTS), load_file(run / "adapter" / WEIGHTS)
    assert start.keys() == end.keys() and any(not (start[k] == end[k]).all() for k in start)
    evals = [r for r in records if r["event"] == "eval"]
    assert evals[-1]["eval_accuracy"] > 0.5


def test_the_sft_adapter_moves_the_answers_off_the_base(tiny_base_dir: Path, tmp_path: Path) -> None:
    """What makes the no-drift check above discriminating: the adapter and the base score a pair apart."""
    from loraforge.data import read_pairs, tokenize_pair
    from loraforge.models import load_adapter, load_base
    from loraforge.train.preference import reference_scores

    sft = _sft_adapter(tiny_base_dir, tmp_path / "sft")
    base = load_base(str(tiny_base_dir))
    pairs_file = _write(tmp_path / "p.jsonl", _pairs(4))
    records = read_pairs(pairs_file, max_row_chars=10_000).records
    pairs = [tokenize_pair(base.tokenizer, r, base.tokenizer.chat_template, 256) for r in records]
    bare = reference_scores(base.model, pairs, batch_size=4)
    adapted = reference_scores(load_adapter(base.model, sft, base.fingerprint), pairs, batch_size=4)
    assert min(abs(a.ref_chosen - b.ref_chosen) for a, b in zip(adapted, bare, strict=True)) > 0.1


def test_an_init_adapter_of_another_base_is_refused_before_anything_is_written(
    tiny_base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = _sft_adapter(tiny_base_dir, tmp_path / "other", fingerprint="sha256:" + "0" * 64)
    config = _config(tmp_path, tiny_base_dir, out="refused", init_adapter=str(other))
    assert main(["train", str(config)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "adapter was trained on base sha256:000" in err and "load the base it was trained on" in err
    assert not (tmp_path / "refused").exists()
