"""run_gate: score the golden set and the probes on the base, the adapter and (optionally) a
previously shipped adapter, decide, and write the reports.

The base is never loaded twice: base answers come from the same PeftModel with its adapter
disabled, and an `against` adapter is loaded beside the candidate as a second named adapter. The
base answers first, so its answers come from its own weights, before any adapter is merged into them
and back out (eval.merge).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from loraforge.config import EvalSpec
from loraforge.data.chat import resolve_chat_template, template_sha256
from loraforge.data.types import Record
from loraforge.errors import EvalError, ModelError
from loraforge.evaluate.base_cache import base_cache_key, load_scored, store_scored
from loraforge.evaluate.few_shot import FEW_SHOT_ROLE, few_shot_cases
from loraforge.evaluate.gate import GateReport, decide, prompting_lines
from loraforge.evaluate.judge import Judge
from loraforge.evaluate.judging import judge_gate_rows, uses_judge
from loraforge.evaluate.probes import PROBE_MAX_NEW_TOKENS, load_probes
from loraforge.evaluate.report import write_reports
from loraforge.evaluate.scoring import (
    Case,
    RowResult,
    answer_and_score,
    cases_from_records,
    prompt_text,
    score_role,
    slice_scores,
)
from loraforge.models import LoadedBase, merged_adapter, read_manifest
from loraforge.models.adapter import unreadable_adapter
from loraforge.models.fingerprint import UNREADABLE_WEIGHTS

AGAINST_NAME = "against"  # adapter name of the --against adapter inside the PeftModel


def gate_cases(golden: list[Record], spec: EvalSpec) -> list[Case]:
    """The user's golden cases, then the probe cases; slice names must not collide."""
    cases = cases_from_records(golden, spec.max_new_tokens)
    golden_slices = {c.slice for c in cases}
    clashes = sorted(golden_slices & set(spec.probes))
    if clashes:
        raise EvalError(
            f"golden slice(s) {', '.join(clashes)} share a name with built-in probes; rename the slice "
            f"in the golden file or drop the probe from eval.probes"
        )
    probe_budget = min(PROBE_MAX_NEW_TOKENS, spec.max_new_tokens)
    cases += cases_from_records(load_probes(list(spec.probes)), probe_budget, probe=True)
    if not cases:
        raise EvalError("the gate has nothing to score: set data.golden, or keep eval.probes non-empty")
    judged = [c for c in cases if uses_judge([c])]
    if judged and (spec.judge.base_url is None or spec.judge.model is None):
        raise EvalError(
            f"{judged[0].where}: a judge check ({len(judged)} row(s)) needs an endpoint: set eval.judge.base_url and "
            "eval.judge.model (docs/eval-gate.md#llm-judge), or remove the judge checks"
        )
    unknown = sorted(set(spec.min_pass_rate) - {c.slice for c in cases})
    if unknown:
        known = ", ".join(sorted({c.slice for c in cases}))
        raise EvalError(f"eval.min_pass_rate names slice(s) {', '.join(unknown)} that no row has; known: {known}")
    return cases


@contextlib.contextmanager
def as_role(model: PeftModel, role: str, candidate: str, merge: bool = False) -> Iterator[None]:
    """Make `model` answer as the base (adapter disabled), the candidate or the against adapter;
    with `merge` (eval.merge) an adapter role answers with its weights folded into the base's."""
    if role in ("base", FEW_SHOT_ROLE):
        with model.disable_adapter():
            yield
        return
    model.set_adapter(AGAINST_NAME if role == "against" else candidate)
    try:
        with merged_adapter(model, merge):
            yield
    finally:
        model.set_adapter(candidate)


def load_against(model: PeftModel, against: Path, base: LoadedBase) -> None:
    if not (against / "adapter_config.json").is_file():
        raise ModelError(
            f"against_dir={against} (--against): no adapter_config.json; point at a shipped adapter directory"
        )
    expected = ((read_manifest(against) or {}).get("base") or {}).get("fingerprint")
    if expected and expected != base.fingerprint:
        raise ModelError(
            f"against_dir={against} (--against): adapter was trained on base {expected}, but the loaded base is "
            f"{base.fingerprint}; compare adapters of the same base"
        )
    try:
        model.load_adapter(str(against), adapter_name=AGAINST_NAME)
    except UNREADABLE_WEIGHTS as exc:
        raise unreadable_adapter(against, exc) from exc


def base_scored(
    base: LoadedBase,
    model: PeftModel | torch.nn.Module,
    cases: list[Case],
    spec: EvalSpec,
    chat_template: str,
    desc: str = "gate: base",
    cache: bool = True,
) -> tuple[list[str], list[tuple[float, int]], str]:
    """The base's answers and reference losses (adapter disabled): from the cache when the same base
    scored the same cases before ("hit"), else scored now and stored ("miss"); `cache` False: "off".
    `model` is the PeftModel the gate holds (its adapter disabled) or the bare base (`loraforge
    baseline`): the cache key is the same for both, so a baseline run makes the gate's base half free."""
    batch_size, give_up_after = spec.batch_size, spec.give_up_after
    key = base_cache_key(base.fingerprint, model, base.tokenizer, cases, batch_size, give_up_after, chat_template)
    cached = load_scored(key, len(cases)) if cache else None
    if cached is not None:
        return *cached, "hit"
    disabled = model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()
    with disabled:
        answers, nll = answer_and_score(
            model, base.tokenizer, cases, batch_size, desc, give_up_after, chat_template=chat_template
        )
    if not cache:
        return answers, nll, "off"
    store_scored(key, (answers, nll))
    return answers, nll, "miss"


def run_gate(
    base: LoadedBase,
    adapter_model: PeftModel,
    golden: list[Record],
    spec: EvalSpec,
    out_dir: Path,
    against: Path | None = None,
    *,
    info: dict[str, Any] | None = None,
    notes: list[str] | None = None,
    chat_template: str | None = None,
    examples: Sequence[Record] = (),
    seed: int = 0,
) -> GateReport:
    """Score base vs adapter (vs against) per slice, decide pass/block, write report.json/md/html.

    Every role is prompted in `chat_template`, the template the adapter was trained with (the
    manifest records it); None: the tokenizer's own. With `examples` (the training rows) and
    `few_shot` in eval.baselines, the base also answers the golden cases few-shot (evaluate.few_shot):
    reported beside the others, never a comparator that blocks."""
    cases = gate_cases(golden, spec)
    judge = Judge(spec.judge) if uses_judge(cases) else None  # before generating: a missing key fails in seconds
    template = chat_template or resolve_chat_template(base.tokenizer)
    n_golden = sum(1 for c in cases if not c.probe)
    shots = None
    if FEW_SHOT_ROLE in spec.baselines and examples and n_golden:
        context = getattr(base.model.config, "max_position_embeddings", None)
        shots = few_shot_cases(cases[:n_golden], examples, spec.few_shot, base.tokenizer, template, seed, context)
    roles = ["base"] + ([FEW_SHOT_ROLE] if shots else []) + ["adapter"] + (["against"] if against is not None else [])
    candidate = str(adapter_model.active_adapter)
    was_training = adapter_model.training
    adapter_model.eval()
    rows = [RowResult(case, prompt=prompt_text(base.tokenizer, case, template)) for case in cases]
    seconds: dict[str, float] = {}
    base_cache = few_shot_cache = "off"
    try:
        if against is not None:
            load_against(adapter_model, against, base)
        for role in roles:
            started = time.perf_counter()
            if role == "base" and spec.cache_base:
                answers, nll, base_cache = base_scored(base, adapter_model, cases, spec, template)
            elif role == FEW_SHOT_ROLE and shots is not None:
                answers, nll, few_shot_cache = base_scored(
                    base, adapter_model, shots.cases, spec, template, "gate: few-shot", spec.cache_base
                )
                for row, case in zip(rows, shots.cases, strict=False):
                    row.prompts[role] = prompt_text(base.tokenizer, case, template)
                score_role(role, rows[:n_golden], answers, nll)
                seconds[role] = round(time.perf_counter() - started, 2)
                continue
            else:
                with as_role(adapter_model, role, candidate, merge=spec.merge):
                    answers, nll = answer_and_score(
                        adapter_model, base.tokenizer, cases, spec.batch_size, f"gate: {role}", spec.give_up_after,
                        chat_template=template,
                    )  # fmt: skip
            score_role(role, rows, answers, nll)
            seconds[role] = round(time.perf_counter() - started, 2)
    finally:
        if against is not None and AGAINST_NAME in adapter_model.peft_config:
            adapter_model.delete_adapter(AGAINST_NAME)
        adapter_model.set_adapter(candidate)
        adapter_model.train(was_training)
    slices = slice_scores(rows, roles)
    notes = list(notes or [])
    judge_info = None
    if judge is not None:
        slices, judge_info, judge_notes = judge_gate_rows(rows, roles, judge)
        notes += judge_notes
    decision = decide(slices, rows, spec, [r for r in roles if r not in ("adapter", FEW_SHOT_ROLE)])
    report_info = {
        "base": {"spec": base.spec, "fingerprint": base.fingerprint},
        "against": str(against) if against is not None else None,
        "eval": spec.model_dump(mode="json"),
        "seconds": seconds,
        "base_cache": base_cache,
        "chat_template_sha256": template_sha256(template),
        "judge": judge_info,
        "few_shot": {**shots.summary(spec.few_shot), "cache": few_shot_cache} if shots else None,
        **(info or {}),
    }
    report = GateReport(
        decision.verdict,
        decision.reasons,
        decision.improvements,
        slices,
        rows,
        roles,
        report_info,
        notes,
        decision.levers,
        decision.advisory,
        prompting=prompting_lines(slices, rows) if shots else [],
    )
    write_reports(report, out_dir)
    return report
