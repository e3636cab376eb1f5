"""run_gate and `loraforge eval` on the tiny model: pass, block, reports, golden freeze, exit codes."""

from __future__ import annotations

import itertools
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from manifests import valid_manifest
from peft import PeftModel

from loraforge.cli import main
from loraforge.config import EvalSpec, LoraSpec
from loraforge.data.types import IGNORE_INDEX, Record
from loraforge.evaluate import run_gate, runner
from loraforge.evaluate.checks import run_checks
from loraforge.evaluate.scoring import Case, encode_reference
from loraforge.files import sha256_file
from loraforge.models import LoadedBase, attach_lora, load_base, read_manifest, save_adapter
from loraforge.models.generate import generate_chat
from loraforge.pipeline.evaluate_run import golden_freeze_notes, recorded_golden_sha256
from loraforge.ship.signing import SIGNATURE_NAME, generate_keypair, sign_adapter, verify_adapter

QUESTIONS = ["refund please", "my desk arrived broken", "where is my order", "charged twice", "hello", "thanks"]
SPEC = EvalSpec(probes=[], max_new_tokens=6, batch_size=3)


def identity_adapter(base: LoadedBase) -> PeftModel:
    """A fresh adapter: B = 0, so it answers exactly like the base."""
    return attach_lora(base.model, LoraSpec(r=4, dropout=0.0))


def wrecking_adapter(base: LoadedBase) -> PeftModel:
    """Large random B on purpose, so the adapter's answers differ from the base's."""
    model = attach_lora(base.model, LoraSpec(r=4, dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 2.0)
    return model


# The tiny random base stops at once (greedy picks the end-of-turn marker first), so what it
# "knows" is to answer nothing; the golden rows check exactly that, and a wrecked adapter breaks it.
ANSWERS_NOTHING = {"type": "regex", "pattern": "", "full_match": True}


@pytest.fixture(scope="module")
def golden_file(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Golden rows the tiny base passes, checked against its own greedy behaviour."""
    base = load_base(str(tiny_base_dir))
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS]
    answers = generate_chat(base.model, base.tokenizer, prompts, max_new_tokens=SPEC.max_new_tokens, batch_size=3)
    assert answers == [""] * len(QUESTIONS), "the tiny base changed; rebuild these golden rows from its answers"
    path = tmp_path_factory.mktemp("golden") / "golden.jsonl"
    lines = [
        {
            "id": f"g-{i}",
            "slice": "tickets",
            "messages": [*p, {"role": "assistant", "content": "ok"}],
            "checks": [ANSWERS_NOTHING],
        }
        for i, p in enumerate(prompts)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in lines))
    return path


def records(path: Path) -> list[Record]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        Record(path, i + 1, "chat", tuple(r["messages"]), id=r["id"], slice=r["slice"], checks=tuple(r["checks"]))
        for i, r in enumerate(rows)
    ]


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.table_ids: list[str] = []
        self.cells: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table" and found.get("id"):
            self.table_ids.append(str(found["id"]))
        for key in ("src", "href"):
            if found.get(key):
                self.external.append(str(found[key]))

    def handle_data(self, data: str) -> None:
        self.cells.append(data.strip())


def test_identity_adapter_passes_and_keeps_per_row_outputs(
    tiny_base_dir: Path, golden_file: Path, tmp_path: Path
) -> None:
    base = load_base(str(tiny_base_dir))
    report = run_gate(base, identity_adapter(base), records(golden_file), SPEC, tmp_path)
    assert report.verdict == "pass" and report.reasons == []
    assert report.slices["tickets"].rate("adapter") == 1.0
    row = report.to_dict()["rows"][0]
    assert row["outputs"]["base"] == row["outputs"]["adapter"] and row["question"] == QUESTIONS[0]
    assert report.slices["tickets"].loss["adapter"] == pytest.approx(report.slices["tickets"].loss["base"])


def test_reference_loss_covers_the_answer_and_its_end_of_turn_only(tiny_base_dir: Path) -> None:
    tokenizer = load_base(str(tiny_base_dir)).tokenizer
    case = Case("x", "s", "w", ({"role": "user", "content": "where is my order"},), "the order", (), 8)
    ids, labels = encode_reference(tokenizer, case)
    kept = [token for token, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(kept) == "the order<|im_end|>"


def test_wrecking_adapter_is_blocked_with_reasons(tiny_base_dir: Path, golden_file: Path, tmp_path: Path) -> None:
    base = load_base(str(tiny_base_dir))
    report = run_gate(base, wrecking_adapter(base), records(golden_file), SPEC, tmp_path)
    assert report.verdict == "block"
    assert "slice 'tickets'" in report.reasons[0] and "base 100.0% (6/6)" in report.reasons[0]
    assert report.slices["tickets"].loss["adapter"] != report.slices["tickets"].loss["base"]


def test_base_answers_come_from_the_disabled_adapter_not_a_copy(
    tiny_base_dir: Path, golden_file: Path, tmp_path: Path
) -> None:
    base = load_base(str(tiny_base_dir))
    model = wrecking_adapter(base)
    was_training = model.training
    uncached = SPEC.model_copy(update={"cache_base": False})  # score the base now, through the disabled adapter
    report = run_gate(base, model, records(golden_file), uncached, tmp_path)
    assert report.info["base_cache"] == "off"
    assert report.slices["tickets"].rate("base") == 1.0
    assert model.active_adapter == "default" and model.training == was_training


def test_html_report_parses_and_holds_the_slice_table(tiny_base_dir: Path, golden_file: Path, tmp_path: Path) -> None:
    base = load_base(str(tiny_base_dir))
    run_gate(base, wrecking_adapter(base), records(golden_file), SPEC, tmp_path)
    parser = _Tables()
    parser.feed((tmp_path / "report.html").read_text())
    assert "slices" in parser.table_ids and "tickets" in parser.cells and "BLOCK" in parser.cells
    assert parser.external == []
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["verdict"] == "block" and set(saved["slices"]["tickets"]) >= {"n", "base", "adapter"}
    assert "## Why it blocks" in (tmp_path / "report.md").read_text()


def test_against_adapter_is_scored_and_removed_after(tiny_base_dir: Path, golden_file: Path, tmp_path: Path) -> None:
    base = load_base(str(tiny_base_dir))
    shipped = tmp_path / "shipped"
    save_adapter(identity_adapter(load_base(str(tiny_base_dir))), shipped, valid_manifest(base.fingerprint))
    model = wrecking_adapter(base)
    report = run_gate(base, model, records(golden_file), SPEC, tmp_path / "eval", against=shipped)
    assert report.roles == ["base", "adapter", "against"] and report.slices["tickets"].rate("against") == 1.0
    assert any("vs against" in r for r in report.reasons) and list(model.peft_config) == ["default"]


# --- the command ------------------------------------------------------------------------------


def write_run(tmp_path: Path, tiny_base_dir: Path, golden_file: Path, wreck: bool) -> Path:
    """A config plus OUTPUT/adapter whose manifest froze the golden file's hash."""
    base = load_base(str(tiny_base_dir))
    model = wrecking_adapter(base) if wreck else identity_adapter(base)
    output = tmp_path / "run"
    manifest = valid_manifest(base.fingerprint, golden_sha256=sha256_file(golden_file))
    save_adapter(model, output / "adapter", manifest)
    golden = tmp_path / "golden.jsonl"
    golden.write_bytes(golden_file.read_bytes())
    config = {
        "base": str(tiny_base_dir),
        "output": str(output),
        "data": {"train": str(golden), "golden": str(golden)},
        "eval": {"probes": [], "max_new_tokens": SPEC.max_new_tokens, "batch_size": 3, "precision": "fp32"},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_eval_exits_0_when_the_gate_passes(
    tiny_base_dir: Path,
    golden_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LORAFORGE_HOME", str(tmp_path / "home"))
    config = write_run(tmp_path, tiny_base_dir, golden_file, wreck=False)
    assert main(["eval", str(config)]) == 0
    assert json.loads((tmp_path / "run" / "eval" / "report.json").read_text())["verdict"] == "pass"
    assert "reused" not in capsys.readouterr().out
    assert main(["eval", str(config)]) == 0  # the same base and cases again: the base is not re-scored
    assert "base answers reused" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "eval" / "report.json").read_text())["base_cache"] == "hit"


def test_eval_exits_3_when_the_gate_blocks(
    tiny_base_dir: Path, golden_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_run(tmp_path, tiny_base_dir, golden_file, wreck=True)
    assert main(["eval", str(config)]) == 3
    assert "slice 'tickets'" in capsys.readouterr().err


def test_eval_records_its_verdict_in_the_manifest_and_card(
    tiny_base_dir: Path, golden_file: Path, tmp_path: Path
) -> None:
    config = write_run(tmp_path, tiny_base_dir, golden_file, wreck=True)
    adapter_dir = tmp_path / "run" / "adapter"
    assert read_manifest(adapter_dir)["eval"] is None  # type: ignore[index]
    assert main(["eval", str(config)]) == 3
    assert read_manifest(adapter_dir)["eval"]["verdict"] == "block"  # type: ignore[index]
    assert "Verdict: **block**" in (adapter_dir / "README.md").read_text()


def test_eval_removes_a_signature_its_record_invalidates(
    tiny_base_dir: Path, golden_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_run(tmp_path, tiny_base_dir, golden_file, wreck=False)
    adapter_dir = tmp_path / "run" / "adapter"
    private, _ = generate_keypair(tmp_path / "keys")
    sign_adapter(adapter_dir, private)
    assert main(["eval", str(config)]) == 0
    assert not (adapter_dir / SIGNATURE_NAME).exists()
    assert "adapter not signed (set ship.key to sign)" in capsys.readouterr().out


def test_eval_with_ship_key_re_signs_a_passing_adapter(tiny_base_dir: Path, golden_file: Path, tmp_path: Path) -> None:
    config = write_run(tmp_path, tiny_base_dir, golden_file, wreck=False)
    private, public = generate_keypair(tmp_path / "keys")
    assert main(["eval", str(config), "--set", f"ship.key={private}"]) == 0
    adapter_dir = tmp_path / "run" / "adapter"
    assert read_manifest(adapter_dir)["eval"]["verdict"] == "pass"  # type: ignore[index]
    assert "loraforge.json" in verify_adapter(adapter_dir, public).files


def test_changed_golden_file_is_refused_with_exit_2(
    tiny_base_dir: Path, golden_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_run(tmp_path, tiny_base_dir, golden_file, wreck=False)
    golden = tmp_path / "golden.jsonl"
    golden.write_text(golden.read_text().replace('"g-0"', '"g-zero"'))
    assert main(["eval", str(config)]) == 2
    err = capsys.readouterr().err
    assert "golden set changed since training" in err and "--allow-new-golden" in err
    assert not (tmp_path / "run" / "eval" / "report.json").exists()


def test_allow_new_golden_runs_and_the_report_says_so(tiny_base_dir: Path, golden_file: Path, tmp_path: Path) -> None:
    config = write_run(tmp_path, tiny_base_dir, golden_file, wreck=False)
    golden = tmp_path / "golden.jsonl"
    golden.write_text(golden.read_text().replace('"g-0"', '"g-zero"'))
    assert main(["eval", str(config), "--allow-new-golden"]) == 0
    saved = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert any("changed since training" in note for note in saved["notes"]) and saved["allow_new_golden"] is True


def test_golden_hash_falls_back_to_the_data_report(tmp_path: Path) -> None:
    (tmp_path / "adapter").mkdir()
    (tmp_path / "data_report.json").write_text(json.dumps({"golden_sha256": "abc"}))
    assert recorded_golden_sha256(tmp_path / "adapter", tmp_path) == ("abc", str(tmp_path / "data_report.json"))


def test_unfrozen_golden_set_is_noted_not_refused(tmp_path: Path) -> None:
    notes = golden_freeze_notes(tmp_path / "g.jsonl", "new", None, "", allow_new=False)
    assert len(notes) == 1 and "was not frozen" in notes[0]


def assert_as_separate_passes(
    model: Any, tokenizer: Any, cases: list[Case], answers: list[str], scores: list[tuple[float, int]], batch_size: int
) -> None:
    """The one-pass answers and reference losses equal separate greedy generation (in batches of
    `batch_size`) and a separate reference forward."""
    from eval_answers import generate_answers

    from loraforge.evaluate.scoring import _reference_nll

    expected_answers = generate_answers(model, tokenizer, cases, batch_size=batch_size)
    expected_scores = _reference_nll(model, tokenizer, [encode_reference(tokenizer, c) for c in cases])
    assert any(answers) and answers == expected_answers
    for (nll, count), (want_nll, want_count) in zip(scores, expected_scores, strict=True):
        assert count == want_count and count > 0
        assert nll == pytest.approx(want_nll, rel=1e-4, abs=1e-4)


def test_one_pass_scoring_and_generation_match_the_two_pass_path(tiny_base_dir: Path) -> None:
    """answer_and_score reuses the reference forward's KV cache for generation: its answers and
    reference losses must equal separate greedy generation and a separate reference forward."""
    from loraforge.evaluate.scoring import answer_and_score, prompt_ids

    base = load_base(str(tiny_base_dir))
    model = wrecking_adapter(base)  # non-empty, varied answers
    model.eval()
    references = ["ok", "a refund of the damaged desk", '{"order": 12}', "no", "hello there, how can I help", "x"]
    cases = [
        Case(f"c{i}", "s", f"t:{i}", ({"role": "user", "content": q},), ref, (), max_new_tokens=8)
        for i, (q, ref) in enumerate(zip(QUESTIONS, references, strict=True))
    ]
    # the fast path applies: the conversation's tokens start with the generation prompt's
    for case in cases:
        ids, _ = encode_reference(base.tokenizer, case)
        prompt = prompt_ids(base.tokenizer, case)
        assert ids[: len(prompt)] == prompt and len(ids) > len(prompt)
    answers, scores = answer_and_score(model, base.tokenizer, cases, batch_size=4, desc="one pass")
    assert_as_separate_passes(model, base.tokenizer, cases, answers, scores, batch_size=4)


def test_a_shared_system_prompt_is_encoded_once_with_the_same_answers_and_losses(tiny_base_dir: Path) -> None:
    """Prompts that open with the same system prompt share its KV cache (encoded once, repeated over
    the batch); every row must still get the answer and reference loss it gets on its own."""
    from loraforge.evaluate.scoring import answer_and_score, prompt_ids
    from loraforge.models.generate import shared_prefix_length

    base = load_base(str(tiny_base_dir))
    model = wrecking_adapter(base)
    model.eval()
    system = {"role": "system", "content": "Extract the ticket as JSON with order id, product, issue and urgency."}
    references = ["ok", "a refund of the damaged desk", '{"order": 12}', "no", "hello there, how can I help", "x"]
    cases = [
        Case(f"c{i}", "s", f"t:{i}", (system, {"role": "user", "content": q * (1 + i % 3)}), ref, (), max_new_tokens=8)
        for i, (q, ref) in enumerate(zip(QUESTIONS, references, strict=True))
    ]
    prompts = [prompt_ids(base.tokenizer, c) for c in cases]
    assert shared_prefix_length(prompts) >= 16  # the shared path runs, not the plain one
    assert len({len(p) for p in prompts}) > 1  # rows of different lengths: padding sits between prefix and rest
    answers, scores = answer_and_score(model, base.tokenizer, cases, batch_size=6, desc="shared prefix")
    assert_as_separate_passes(model, base.tokenizer, cases, answers, scores, batch_size=1)


def test_hopeless_answers_end_early_and_every_score_stays_the_same(tiny_base_dir: Path) -> None:
    """eval.give_up_after ends a row once it can no longer pass its checks: the tiny wrecked model
    never writes JSON, so json rows end after 3 tokens; a `contains` row can still pass and runs on.
    Pass/fail and reference losses equal those of full-length generation."""
    from loraforge.evaluate.scoring import answer_and_score

    base = load_base(str(tiny_base_dir))
    model = wrecking_adapter(base)
    model.eval()
    checks = [[{"type": "json_valid"}], [{"type": "contains", "value": "zz"}], [{"type": "exact"}]]
    cases = [
        Case(f"c{i}", "s", f"t:{i}", ({"role": "user", "content": q},), '{"order": 12}', tuple(checks[i % 3]), 24)
        for i, q in enumerate(QUESTIONS)
    ]
    full, full_scores = answer_and_score(model, base.tokenizer, cases, batch_size=6, desc="full")
    cut, cut_scores = answer_and_score(model, base.tokenizer, cases, batch_size=6, desc="cut", give_up_after=3)
    assert cut_scores == full_scores
    tokens = [len(base.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in full]
    ended_early = 0
    for case, whole, short, n in zip(cases, full, cut, tokens, strict=True):
        assert whole.startswith(short)
        assert [o.passed for o in run_checks(case.checks, short, case.reference)] == [
            o.passed for o in run_checks(case.checks, whole, case.reference)
        ]
        if case.checks[0]["type"] == "contains":
            assert short == whole  # no early verdict for `contains`: it runs to its end
        elif n > 4:
            ended_early += short != whole
    assert ended_early >= 2


def test_shared_prefix_length_leaves_each_prompt_a_token_and_ignores_short_overlaps() -> None:
    from loraforge.models.generate import MIN_SHARED_PREFIX, shared_prefix_length

    head = list(range(100, 100 + MIN_SHARED_PREFIX))
    assert shared_prefix_length([head + [1, 2], head + [1, 3]]) == MIN_SHARED_PREFIX + 1
    assert shared_prefix_length([head + [1], head + [1, 3]]) == MIN_SHARED_PREFIX  # the shorter keeps its last token
    assert shared_prefix_length([head[:-1] + [1], head[:-1] + [2]]) == 0  # under the minimum: not worth a pass
    assert shared_prefix_length([head + [1, 2]]) == 0  # a single prompt has nothing to share


def test_the_base_is_scored_once_and_reused_while_nothing_it_depends_on_changes(
    tiny_base_dir: Path, golden_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAFORGE_HOME", str(tmp_path / "home"))
    roles_scored: list[str] = []
    real = runner.answer_and_score

    def counting(*args: Any, **kwargs: Any) -> Any:
        roles_scored.append(args[4])
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "answer_and_score", counting)
    base = load_base(str(tiny_base_dir))
    model = wrecking_adapter(base)
    first = run_gate(base, model, records(golden_file), SPEC, tmp_path / "a")
    again = run_gate(base, model, records(golden_file), SPEC, tmp_path / "b")
    assert roles_scored == ["gate: base", "gate: adapter", "gate: adapter"]
    assert (first.info["base_cache"], again.info["base_cache"]) == ("miss", "hit")
    assert [r.to_dict() for r in again.rows] == [r.to_dict() for r in first.rows]
    assert again.verdict == first.verdict == "block"

    with torch.no_grad():  # the same files, but the base in memory changed: it must be scored again
        base.model.get_output_embeddings().weight[0] += 1.0
    edited = run_gate(base, model, records(golden_file), SPEC, tmp_path / "c")
    fewer = run_gate(base, model, records(golden_file)[:4], SPEC, tmp_path / "d")
    off = run_gate(base, model, records(golden_file), SPEC.model_copy(update={"cache_base": False}), tmp_path / "e")
    assert [edited.info["base_cache"], fewer.info["base_cache"], off.info["base_cache"]] == ["miss", "miss", "off"]
    assert roles_scored.count("gate: base") == 4


def test_a_merged_adapter_answers_like_the_unmerged_one_and_is_unmerged_after(
    tiny_base_dir: Path, golden_file: Path, tmp_path: Path
) -> None:
    """eval.merge folds the adapter into the base weights while it answers: the same answers and,
    up to float rounding, the same reference losses as PEFT's unmerged forward; afterwards no layer
    is left merged and the base weights are back to what they were."""
    from loraforge.models import can_merge

    base = load_base(str(tiny_base_dir))
    model = wrecking_adapter(base)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer.weight" in n}
    uncached = SPEC.model_copy(update={"cache_base": False})
    merged = run_gate(base, model, records(golden_file), uncached, tmp_path / "merged")
    assert can_merge(model)  # unmerged on the way out
    plain = run_gate(
        base, model, records(golden_file), uncached.model_copy(update={"merge": False}), tmp_path / "plain"
    )
    assert [r.outputs for r in merged.rows] == [r.outputs for r in plain.rows]
    assert any(r.outputs["adapter"] != r.outputs["base"] for r in plain.rows)  # the adapter changes answers
    for m_row, p_row in zip(merged.rows, plain.rows, strict=True):
        assert m_row.nll_sum["adapter"] == pytest.approx(p_row.nll_sum["adapter"], rel=1e-4)
    for name, param in model.named_parameters():
        if name in before:
            torch.testing.assert_close(param.detach(), before[name], rtol=0, atol=0)  # bit for bit
    model.merge_adapter()
    assert not can_merge(model)  # already merged: the gate would not merge it twice
    model.unmerge_adapter()
    model.to(torch.bfloat16)
    assert not can_merge(model)  # bf16 would round a small update away: judged unmerged


def test_a_budget_splits_into_the_fewest_batches_of_even_size() -> None:
    from loraforge.evaluate.scoring import _batches

    cases = [Case(f"c{i}", "s", f"t:{i}", (), "r", (), max_new_tokens=48 if i < 169 else 16) for i in range(174)]
    lengths = [(i * 37) % 101 for i in range(174)]
    batches = _batches(cases, 32, lengths)
    assert [(budget, len(chunk)) for budget, chunk in batches] == [(48, 28), (48, 28), (48, 28), (48, 29),
                                                                   (48, 28), (48, 28), (16, 5)]  # fmt: skip
    order = [i for _, chunk in batches for i in chunk]
    assert sorted(order) == list(range(174))  # every case once
    assert all(lengths[a] <= lengths[b] for _, chunk in batches for a, b in itertools.pairwise(chunk))
