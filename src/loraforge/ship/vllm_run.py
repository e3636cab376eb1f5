"""The optional vLLM check: find a python with vLLM, run vllm_check.py in it, compare its greedy
tokens with loraforge's own (the unmerged adapter in fp32) on the same prompt token ids."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from loraforge.ship import vllm_check
from loraforge.ship.adapter_source import AdapterSource, check_prompts
from loraforge.ship.merge import (
    DEFAULT_GREEDY_TOKENS,
    encode_prompt,
    first_difference,
    greedy_tokens_of,
    load_unmerged,
)

VLLM_PYTHON_ENV = "LORAFORGE_VLLM_PYTHON"
VLLM_VENV_PYTHON = Path(".venv-vllm") / "bin" / "python"  # where `make setup-vllm` puts it
VLLM_CHECK_PROMPTS = 8  # golden prompts compared; the engine's start dominates the check's time
VLLM_TIMEOUT_S = 1200  # engine start + generation on a 2-core CPU took ~2 minutes (docs/ship-export.md)


@dataclass
class VllmCheck:
    ran: bool
    python: str | None = None
    reason: str | None = None  # why it did not run, or how it failed
    equal: bool | None = None
    first_difference: str | None = None
    n_prompts: int = 0
    greedy_tokens: int = 0
    prompts_source: str = ""
    vllm_version: str | None = None
    seconds: float = 0.0


def vllm_python() -> Path | None:
    """$LORAFORGE_VLLM_PYTHON, else .venv-vllm/bin/python in the current directory, if it imports vllm."""
    configured = os.environ.get(VLLM_PYTHON_ENV)
    candidate = Path(configured) if configured else VLLM_VENV_PYTHON
    if not candidate.is_file():
        return None
    probe = subprocess.run([str(candidate), "-I", "-c", "import vllm"], capture_output=True, timeout=300, check=False)
    return candidate if probe.returncode == 0 else None


def run_vllm_check(
    source: AdapterSource,
    adapter_out: Path,
    base_dir: Path,
    max_lora_rank: int,
    greedy_tokens: int = DEFAULT_GREEDY_TOKENS,
) -> VllmCheck:
    python = vllm_python()
    if python is None:
        return VllmCheck(False, reason=f"vLLM not installed (make setup-vllm, or set {VLLM_PYTHON_ENV})")
    started = time.perf_counter()
    conversations, where = check_prompts(source, None, VLLM_CHECK_PROMPTS)
    unmerged = load_unmerged(source, torch.float32)
    template = source.chat_template or unmerged.chat_template
    prompts = [encode_prompt(unmerged.tokenizer, c, template) for c in conversations]
    pad_id = unmerged.tokenizer.pad_token_id
    ours = [greedy_tokens_of(unmerged.model, p, greedy_tokens, pad_id) for p in prompts]
    check = VllmCheck(True, str(python), n_prompts=len(prompts), greedy_tokens=greedy_tokens, prompts_source=where)
    try:
        theirs, check.vllm_version = _vllm_tokens(python, base_dir, adapter_out, max_lora_rank, greedy_tokens, prompts)
    except (subprocess.SubprocessError, ValueError, OSError) as exc:
        check.ran, check.reason = False, f"the vLLM run failed: {exc}"
        return check
    differing = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    if differing:
        i = differing[0]
        check.first_difference = first_difference(i, ours[i], theirs[i], unmerged.tokenizer, ("loraforge", "vLLM"))
    check.equal = check.first_difference is None
    check.seconds = round(time.perf_counter() - started, 1)
    return check


def _vllm_tokens(
    python: Path, base_dir: Path, adapter: Path, max_lora_rank: int, max_tokens: int, prompts: list[list[int]]
) -> tuple[list[list[int]], str]:
    with tempfile.TemporaryDirectory(prefix="loraforge-vllm-") as tmp:
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps(prompts), encoding="utf-8")
        command = [
            str(python), "-I", str(Path(vllm_check.__file__).resolve()), "--base", str(base_dir), "--adapter",
            str(adapter), "--max-lora-rank", str(max_lora_rank), "--max-tokens", str(max_tokens), "--prompts",
            str(prompts_file),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=VLLM_TIMEOUT_S, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(vllm_check.RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise ValueError(f"exit {done.returncode}: {' | '.join(tail)}")
    result = json.loads(lines[-1].removeprefix(vllm_check.RESULT_PREFIX))
    tokens = result["tokens"]
    if len(tokens) != len(prompts):
        raise ValueError(f"vLLM answered {len(tokens)} of {len(prompts)} prompts")
    return tokens, str(result.get("vllm"))
