"""The preference round's objective: DPO's loss equals TRL's on the same model and pairs, SimPO's
equals its formula, and the training loop learns to prefer the chosen answers of held-out pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from loraforge.config import LoraSpec, TrainSpec
from loraforge.data.types import TokenizedPair
from loraforge.models import attach_lora, load_base
from loraforge.train import BatchPlan, train
from loraforge.train.preference import PreferenceLoss, ScoredPair, collate_pairs, reference_scores

RELATIVE_TOLERANCE = 1e-5  # the bar for parity with TRL, fp32


def _conversations(n: int) -> list[dict[str, Any]]:
    return [
        {
            "prompt": [{"role": "user", "content": f"where is order {i}?"}],
            "chosen": [{"role": "assistant", "content": f"It ships today, order {i}. Thanks!"}],
            "rejected": [{"role": "assistant", "content": "no idea" + " really" * (i % 5)}],
        }
        for i in range(n)
    ]


def _tokenized(tokenizer: Any, rows: list[dict[str, Any]]) -> list[TokenizedPair]:
    """Pairs as the data stage renders them: the generation prompt, then what the template adds for
    each assistant turn."""
    pairs = []
    for line, row in enumerate(rows, start=1):
        text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        answers = []
        for side in ("chosen", "rejected"):
            full_text = tokenizer.apply_chat_template(row["prompt"] + row[side], tokenize=False)
            full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
            assert full[: len(prompt)] == prompt
            answers.append(tuple(full[len(prompt) :]))
        pairs.append(TokenizedPair(tuple(prompt), answers[0], answers[1], line))
    return pairs


def _perturb(model: Any, seed: int, adapter: str = "default") -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name and f".{adapter}." in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)


def test_dpo_sigmoid_loss_equals_trl_dpo_trainer(tiny_base_dir: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    base = load_base(str(tiny_base_dir))
    model = attach_lora(base.model, LoraSpec(r=4, alpha=8, dropout=0.0))
    _perturb(model, 0)  # a non-zero adapter: the reference is where the run starts, not the bare base
    rows = _conversations(4)
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, beta=0.1, loss_type=["sigmoid"],
        report_to=[], use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
    )  # fmt: skip
    # TRL keeps a copy of the starting adapter as its reference ("ref"); ours scores the pairs now
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=base.tokenizer)
    pairs = _tokenized(base.tokenizer, rows)
    scored = reference_scores(model, pairs, batch_size=4)
    _perturb(model, 1)  # the policy moves; both references stay at the start
    trl_batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    theirs = float(trainer.compute_loss(trainer.model, trl_batch))

    ours_module = PreferenceLoss(model, "sigmoid", beta=0.1)
    ours = float(ours_module(**collate_pairs(scored))) / len(pairs)  # the sum over pairs -> TRL's mean
    assert theirs != pytest.approx(float(torch.log(torch.tensor(2.0))), abs=1e-4)  # the policy did move
    assert ours == pytest.approx(theirs, rel=RELATIVE_TOLERANCE)


def test_simpo_loss_is_its_formula_on_mean_token_log_probs(tiny_base_dir: Path) -> None:
    base = load_base(str(tiny_base_dir))
    model = attach_lora(base.model, LoraSpec(r=4, alpha=8, dropout=0.0))
    _perturb(model, 2)
    pairs = _tokenized(base.tokenizer, _conversations(3))
    batch = collate_pairs(pairs)
    beta, gamma = 2.0, 1.0
    model.eval()
    loss = float(PreferenceLoss(model, "simpo", beta=beta, gamma=gamma)(**batch))
    # the formula, from full logits: mean log-prob of each answer's tokens
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logps = F.log_softmax(logits[:, :-1], dim=-1)
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    token = torch.gather(logps, 2, targets.clamp(min=0).unsqueeze(2)).squeeze(2) * mask
    mean = token.sum(1) / mask.sum(1)
    n = len(pairs)
    expected = -F.logsigmoid(beta * (mean[:n] - mean[n:]) - gamma).sum()
    assert loss == pytest.approx(float(expected), rel=RELATIVE_TOLERANCE)


def test_dpo_training_learns_to_prefer_the_chosen_of_held_out_pairs(tiny_base_dir: Path, tmp_path: Path) -> None:
    base = load_base(str(tiny_base_dir))
    torch.manual_seed(0)
    model = attach_lora(base.model, LoraSpec(r=8, alpha=16, dropout=0.0))
    pairs = _tokenized(base.tokenizer, _conversations(40))
    scored = reference_scores(model, pairs, batch_size=8)
    assert all(s.ref_chosen < 0 and s.ref_rejected < 0 for s in scored)
    plan = BatchPlan(scored[:32], scored[32:], collate_pairs, micro_batch_size=4, seed=0)
    spec = TrainSpec(method="dpo", lr=5e-3, warmup_ratio=0.0, epochs=3, eval_every=1.0, grad_accum=2,
                     precision="fp32", early_stopping_patience=0)  # fmt: skip
    result = train(model, plan, spec, tmp_path / "run", identity={})
    records = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    evals = [r for r in records if r.get("kind") == "eval" or "eval_loss" in r]
    steps = [r for r in records if "margin" in r and "eval_loss" not in r]
    assert steps and {"margin", "accuracy", "chosen_drift", "rejected_drift"} <= set(steps[0])
    assert evals[-1]["eval_accuracy"] == 1.0  # every held-out pair: chosen preferred over the reference's
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] < float(torch.log(torch.tensor(2.0)))
    assert evals[-1]["eval_margin"] > 0
    assert (tmp_path / "run" / "loss.png").is_file()


def test_a_pair_batch_is_chosen_rows_then_rejected_rows_with_answer_only_labels(tiny_base_dir: Path) -> None:
    base = load_base(str(tiny_base_dir))
    pairs = _tokenized(base.tokenizer, _conversations(2))
    batch = collate_pairs([ScoredPair(pairs[0], -1.5, -2.5), pairs[1]])
    assert batch["input_ids"].shape[0] == 4
    for row, (pair, side) in enumerate([(pairs[0], "c"), (pairs[1], "c"), (pairs[0], "r"), (pairs[1], "r")]):
        answer = pair.chosen_ids if side == "c" else pair.rejected_ids
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert labelled == list(answer)
        assert int(batch["attention_mask"][row].sum()) == len(pair.prompt_ids) + len(answer)
    assert batch["ref_chosen"].tolist() == [-1.5, 0.0] and batch["ref_rejected"].tolist() == [-2.5, 0.0]
