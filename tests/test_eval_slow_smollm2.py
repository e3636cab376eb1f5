"""The gate on the real base: the bundled probes pass on it, and forgetting is blocked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eval_answers import generate_answers

from loraforge.config import EvalSpec, LoraSpec
from loraforge.evaluate import load_probes, run_checks, run_gate
from loraforge.evaluate.probes import PROBE_MAX_NEW_TOKENS
from loraforge.evaluate.scoring import cases_from_records
from loraforge.models import attach_lora, load_base

pytestmark = pytest.mark.slow
ALIAS = "smollm2-135m-instruct"
CORRUPT_ANSWER = "Banana banana banana."


def corrupted_adapter(base, steps: int = 12):  # type: ignore[no-untyped-def]
    """LoRA trained for a few steps to answer every probe question with the same nonsense."""
    torch.manual_seed(0)
    model = attach_lora(base.model, LoraSpec(r=8, dropout=0.0))
    questions = [r.messages[0]["content"] for r in load_probes(["general"])][:8]
    texts = [
        base.tokenizer.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": CORRUPT_ANSWER}], tokenize=False
        )
        for q in questions
    ]
    base.tokenizer.padding_side = "right"
    enc = base.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for _ in range(steps):
        loss = model(**enc, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def test_the_base_passes_every_bundled_probe() -> None:
    base = load_base(ALIAS)
    spec = EvalSpec()
    cases = cases_from_records(load_probes(list(spec.probes)), PROBE_MAX_NEW_TOKENS, probe=True)
    answers = generate_answers(base.model, base.tokenizer, cases, spec.batch_size)
    failing = [
        (case.id, answer)
        for case, answer in zip(cases, answers, strict=True)
        if not all(o.passed for o in run_checks(case.checks, answer, case.reference))
    ]
    assert failing == []


def test_an_adapter_trained_on_corrupted_answers_is_blocked(tmp_path: Path) -> None:
    base = load_base(ALIAS)
    # 16 new tokens: enough for the corrupted answer to show, and the slow set stays short
    spec = EvalSpec(probes=["general"], max_new_tokens=16)
    report = run_gate(base, corrupted_adapter(base), [], spec, tmp_path)
    assert report.verdict == "block" and "slice 'general'" in report.reasons[0]
    assert "banana" in report.reasons[0].lower()
