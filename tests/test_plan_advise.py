"""`loraforge advise`: every branch of the wizard gives one method with reasons and config keys."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from loraforge.cli import app, main
from loraforge.plan import Answers, advise, questions_for
from loraforge.plan.advise import GAPS

BRANCHES = [
    # (answers, method, config keys that must be set, a phrase the reasons must contain)
    (Answers("knowledge"), "rag", {}, "retrieval"),
    (Answers("prompt"), "prompt-optimisation", {}, "prompt"),
    (Answers("behaviour", "verifier", 7, 80, 5000), "grpo-dora", {"lora.variant": "dora"}, "GRPO"),
    (Answers("behaviour", "preferences", 7, 80, 5000), "dpo-dora", {"lora.variant": "dora"}, "DPO"),
    (Answers("behaviour", "demonstrations", 7, 80, 5000), "sft-dora", {"lora.variant": "dora"}, "DoRA"),
    (Answers("behaviour", "demonstrations", 8, 24, 5000), "sft-lora-fsdp", {"lora.variant": "lora"}, "not yet"),
    (Answers("behaviour", "demonstrations", 405, 80, 5000), "sft-lora-fsdp", {"lora.variant": "lora"}, "FSDP"),
    (Answers("behaviour", "demonstrations", None, None, 5000), "sft-dora", {"lora.variant": "dora"}, "plan"),
    (Answers("behaviour", "demonstrations", 1, 24, 300), "sft-dora", {"lora.r": 8, "train.epochs": 1.0}, "small"),
    (Answers("behaviour", "demonstrations", 1, 24, 500_000), "sft-dora", {"lora.r": 32}, "rank 32"),
    (Answers("format", "demonstrations", 1, 24, 5000, True), "sft-dora", {"train.lr": 1e-4}, "low learning rate"),
    (Answers("format", "demonstrations", 1, 24, 5000, False), "sft-dora", {}, "pretrained base"),
]


@pytest.mark.parametrize(
    ("answers", "method", "keys", "phrase"), BRANCHES, ids=[b[1] + str(i) for i, b in enumerate(BRANCHES)]
)
def test_each_branch_gives_one_method_with_reasons_and_keys(
    answers: Answers, method: str, keys: dict[str, object], phrase: str
) -> None:
    advice = advise(answers)
    assert advice.method == method
    assert keys.items() <= advice.config_keys.items()
    assert any(phrase in reason for reason in advice.reasons)


def test_no_branch_asks_more_than_five_questions() -> None:
    assert max(len(questions_for(gap)) for gap in GAPS) <= 5


def test_knowledge_gap_asks_nothing_more_and_does_not_fine_tune() -> None:
    assert [q.key for q in questions_for("knowledge")] == ["gap"]
    assert advise(Answers("knowledge")).fine_tune is False


def test_flags_answer_everything_and_json_holds_the_decision(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["advise", "--gap", "behaviour", "--signal", "preferences", "--model-b", "8", "--vram-gb", "24",
            "--examples", "5000", "--no-interactive", "--json"]  # fmt: skip
    assert main(argv) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["method"] == "dpo-lora-fsdp" and decision["config_keys"]["lora.variant"] == "lora"


@pytest.mark.parametrize("model_b", [1, 8, 13, 34, 70, 180, 405])
@pytest.mark.parametrize("vram_gb", [16, 24, 48, 80])
def test_advise_does_not_recommend_qlora_on_a_gpu(model_b: int, vram_gb: int) -> None:
    """load_base places a 4-bit base on the GPU, but no QLoRA run has been checked on one yet."""
    advice = advise(Answers("behaviour", "demonstrations", model_b, vram_gb, 5000))
    assert advice.config_keys["lora.variant"] != "qlora" and "qlora" not in advice.method


def test_missing_answers_without_a_terminal_name_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", "--gap", "behaviour", "--no-interactive"]) == 2
    assert "--signal" in capsys.readouterr().err


def test_interactive_prompts_ask_the_questions_in_order() -> None:
    result = CliRunner().invoke(app, ["advise", "--interactive"], input="format\nyes\ndemonstrations\n8 80\n300\n")
    assert result.exit_code == 0, result.output
    assert "method: sft-dora" in result.output and "train.lr=0.0001" in result.output


def test_unknown_gap_is_refused_with_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", "--gap", "vibes", "--no-interactive"]) == 2
    assert "knowledge, prompt, behaviour, format" in capsys.readouterr().err
