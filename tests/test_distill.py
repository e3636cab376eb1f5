"""Self-distillation replay: prompt files, the base's own answers, what is dropped, `loraforge distill`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import LLAMA3_STYLE_TEMPLATE, save_tiny_base

from loraforge.cli import main
from loraforge.config import DataSpec
from loraforge.data.records import read_records
from loraforge.errors import DataError
from loraforge.models import LoadedBase, load_base, load_tokenizer
from loraforge.models.generate import generate_chat_finished
from loraforge.pipeline.distill import distill, read_prompts
from loraforge.pipeline.replay import BUILTIN_DIR, PROMPTS, resolve_replay

EXAMPLES = Path(__file__).parents[1] / "examples" / "support_tickets"
PROBES = Path(__file__).parents[1] / "src" / "loraforge" / "evaluate" / "probes"


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _one_word_then_stop(
    base: LoadedBase, conversation: list[dict[str, str]], chat_template: str | None = None
) -> LoadedBase:
    """Make greedy write one visible token for this conversation (prompted in `chat_template`, None:
    the tokenizer's own) and end there: zero the head rows of the whitespace tokens it would pick
    first, then make its first visible token a stop token."""
    ids = base.tokenizer.apply_chat_template(
        conversation, chat_template=chat_template, add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    head = base.model.get_output_embeddings().weight
    with torch.no_grad():
        for _ in range(20):
            first = int(base.model(input_ids=ids).logits[0, -1].argmax())
            if base.tokenizer.decode([first]).strip():
                break
            head[first] = 0.0
    base.model.generation_config.eos_token_id = first
    return base


def test_prompt_rows_are_validated_with_file_and_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "prompts.jsonl",
        [
            {"prompt": "What is 2 + 2?"},
            "{not json",
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "old answer"}]},
            {"messages": [{"role": "assistant", "content": "only an answer"}]},
            {"prompt": "Say hi", "checks": [{"type": "exact"}]},
            {"prompt": "Say hi", "checks": [{"type": "regex", "pattern": "("}]},
        ],
    )
    with pytest.raises(DataError) as info:
        read_prompts(path)
    message = str(info.value)
    assert f"{path} line 2: invalid JSON" in message
    assert f"{path} line 4: the conversation must end on a user turn" in message
    assert f"{path} line 5: check 'exact' compares with a reference answer" in message
    assert f"{path} line 6:" in message and "not a valid regular expression" in message
    assert "line 1" not in message and "line 3" not in message
    good = _write(
        tmp_path / "good.jsonl",
        [
            {"prompt": "What is 2 + 2?"},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "old answer"}]},
        ],
    )
    prompts = read_prompts(good)
    assert [p.messages[-1]["role"] for p in prompts] == ["user", "user"]  # the old answer is the base's to write
    assert prompts[0].id == "line-1"


def test_generation_reports_whether_each_answer_finished(tiny_base_dir: Path) -> None:
    base = load_base(str(tiny_base_dir))
    prompts = [[{"role": "user", "content": q}] for q in ("hello", "where is my order")]
    # the tiny random base writes newlines and never ends its turn: cut off at the cap
    assert generate_chat_finished(base.model, base.tokenizer, prompts, max_new_tokens=4) == [("", False)] * 2
    stopping = _one_word_then_stop(base, prompts[1])
    [(text, finished)] = generate_chat_finished(stopping.model, stopping.tokenizer, prompts[1:], max_new_tokens=4)
    assert finished and text


def test_distill_keeps_finished_answers_that_pass_their_checks(tiny_base_dir: Path, tmp_path: Path) -> None:
    question = "where is my order"
    prompt_rows = [
        {"id": "keep", "prompt": question},
        {"id": "benign", "prompt": question, "checks": [{"type": "not_refusal"}]},
        {"id": "harmful", "prompt": question, "checks": [{"type": "refusal"}]},
    ]
    prompts = read_prompts(_write(tmp_path / "prompts.jsonl", prompt_rows))
    rambling = load_base(str(tiny_base_dir))
    cut_off = distill(rambling, prompts, max_new_tokens=3)
    assert cut_off.rows == [] and cut_off.dropped == {"unfinished": 3}
    base = _one_word_then_stop(load_base(str(tiny_base_dir)), [{"role": "user", "content": question}])
    result = distill(base, prompts, max_new_tokens=3)
    assert [r["id"] for r in result.rows] == ["keep", "benign"]
    assert result.dropped == {"failed_checks": 1}
    answer = result.rows[0]["messages"][-1]
    assert answer["role"] == "assistant" and answer["content"].strip()
    assert result.rows[0]["messages"][:-1] == [{"role": "user", "content": question}]


def test_distill_command_writes_training_rows_and_rejects_bad_files(tiny_base_dir: Path, tmp_path: Path) -> None:
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": "hello"}, {"prompt": "where is my order"}])
    out = tmp_path / "replay.jsonl"
    # the tiny base never ends its turn, so both are dropped and an empty file is still written whole
    assert main(["distill", str(prompts), "--out", str(out), "--base", str(tiny_base_dir)]) == 0
    assert out.read_text() == ""
    bad = _write(tmp_path / "bad.jsonl", [{"nothing": 1}])
    assert main(["distill", str(bad), "--out", str(tmp_path / "x.jsonl"), "--base", str(tiny_base_dir)]) == 2
    assert not (tmp_path / "x.jsonl").exists()


def test_bundled_replay_rows_are_training_rows_disjoint_from_probes_and_golden() -> None:
    replay = read_records(BUILTIN_DIR / "smollm2-135m-instruct.jsonl", max_row_chars=200_000)
    assert len(replay.records) >= 50 and not replay.problems
    asked = {r.messages[0]["content"].strip().lower() for r in replay.records}
    tested = set()
    for path in (PROBES / "general.jsonl", PROBES / "safety.jsonl", EXAMPLES / "golden.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            tested |= {m["content"].strip().lower() for m in json.loads(line)["messages"] if m["role"] == "user"}
    assert not asked & tested
    prompts = {p.id for p in read_prompts(PROMPTS)}
    assert {r.id for r in replay.records} <= prompts


def test_distill_and_builtin_replay_prompt_in_the_runs_data_template(tmp_path: Path) -> None:
    """A base that ends its turn only when prompted in the Llama-3-style template: `loraforge distill
    --template` and data.replay=builtin with data.template get its answer; its own ChatML template
    gets none (the answer runs to the budget and is dropped)."""
    question = "What is the capital of France?"
    base = load_base(str(save_tiny_base(tmp_path / "random", seed=2)))
    stopping = _one_word_then_stop(base, [{"role": "user", "content": question}], LLAMA3_STYLE_TEMPLATE)
    base_dir = tmp_path / "stops-in-llama3"
    stopping.model.save_pretrained(base_dir)  # generation_config.json keeps the new stop token
    stopping.tokenizer.save_pretrained(base_dir)
    template = tmp_path / "llama3.jinja"
    template.write_text(LLAMA3_STYLE_TEMPLATE, encoding="utf-8")
    prompts = _write(tmp_path / "prompts.jsonl", [{"id": "france", "prompt": question}])

    own, chosen = tmp_path / "own.jsonl", tmp_path / "chosen.jsonl"
    assert main(["distill", str(prompts), "--out", str(own), "--base", str(base_dir)]) == 0
    assert (
        main(["distill", str(prompts), "--out", str(chosen), "--base", str(base_dir), "--template", str(template)]) == 0
    )
    assert own.read_text() == ""
    [row] = [json.loads(line) for line in chosen.read_text().splitlines()]
    assert row["id"] == "france" and row["messages"][-1]["role"] == "assistant" and row["messages"][-1]["content"]

    tokenizer = load_tokenizer(str(base_dir))
    spec = DataSpec(train=tmp_path / "t.jsonl")
    assert resolve_replay(spec, str(base_dir), tokenizer, prompts=prompts).replay is None
    resolved = resolve_replay(spec.model_copy(update={"template": template}), str(base_dir), tokenizer, prompts=prompts)
    assert isinstance(resolved.replay, Path)
    assert [json.loads(line) for line in resolved.replay.read_text().splitlines()] == [row]
