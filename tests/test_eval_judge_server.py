"""The LLM judge against a real `loraforge serve` app on the tiny base, over a socket, through the
official openai client: calibration on the bundled labels, the gate's judge slices, and the cache.

The tiny judge answers nonsense, so these check the plumbing, not the judge's taste: requests
reach the server (its /metrics count them), a second run sends none, and the agreement figures
are the ones the judge's actual replies give."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from serve_http_support import Served, TenantSpec, publish_live, serving, start_served
from ship_adapters import make_adapter

from loraforge.cli import eval_cmds, main
from loraforge.config import EvalSpec, JudgeSpec, LoraSpec
from loraforge.data.types import Record
from loraforge.evaluate import run_gate
from loraforge.evaluate.calibration import UNREAD, calibration_path, cohen_kappa
from loraforge.evaluate.judge import read_reply
from loraforge.models import attach_lora, load_base
from loraforge.ship.registry import Registry

LABELS = Path(__file__).resolve().parent.parent / "examples" / "judge" / "labels.jsonl"
KEY_ENV = "LORAFORGE_TEST_JUDGE_KEY"
JUDGE_MODEL = "judge"  # a registry adapter with B non-zero: the served base alone answers only newlines
CHAT_ROUTE = "/v1/chat/completions"


@pytest.fixture(scope="module")
def served(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("judge-serve")
    registry = Registry(work / "registry")
    publish_live(registry, make_adapter(tiny_base_dir, work / "judge", r=4, b_std=0.5), JUDGE_MODEL)
    yield from serving(start_served(tiny_base_dir, registry, {"grader": TenantSpec([JUDGE_MODEL])}, work))


def chat_requests(served: Served) -> float:
    """Chat completions the server has answered, from its /metrics."""
    families = text_string_to_metric_families(served.get("/metrics", "grader").text)
    return sum(
        s.value
        for family in families
        for s in family.samples
        if s.name == "loraforge_requests_total" and s.labels.get("route") == CHAT_ROUTE
    )


def judge_spec(served: Served, home: Path, **extra: object) -> JudgeSpec:
    return JudgeSpec(
        base_url=f"{served.url}/v1", model=JUDGE_MODEL, api_key_env=KEY_ENV, max_tokens=12,
        cache_dir=home / "judge-cache", calibration=home / "calibration.json", **extra,  # type: ignore[arg-type]
    )  # fmt: skip


@dataclass
class Calibrated:
    work: Path
    config: Path
    spec: JudgeSpec
    first_requests: float  # chat requests the first calibration sent
    first_output: str
    second_requests: float  # ... and the second, same labels and judge
    second_output: str


@pytest.fixture(scope="module")
def calibrated(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Calibrated]:
    work = tmp_path_factory.mktemp("judge-calibrate")
    spec = judge_spec(served, work)
    config = work / "run.yaml"
    judge = spec.model_dump(mode="json", exclude_none=True)
    config.write_text(json.dumps({"data": {"train": "unused.jsonl"}, "eval": {"judge": judge}}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, served.keys["grader"])
        outputs, counts = [], []
        for _ in range(2):
            before = chat_requests(served)
            with _captured() as out:
                assert main(["eval", "calibrate-judge", str(LABELS), "--config", str(config)]) == 0
            counts.append(chat_requests(served) - before)
            outputs.append(" ".join(out.read().split()))
    yield Calibrated(work, config, spec, counts[0], outputs[0], counts[1], outputs[1])


class _captured:
    """What a CLI command prints (a module fixture has no capsys): eval_cmds' console, captured with
    rich's own Console.capture, which leaves the console printing to the live stdout afterwards."""

    def __enter__(self) -> _captured:
        self._capture = eval_cmds.console.capture()
        self._capture.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._capture.__exit__(None, None, None)

    def read(self) -> str:
        return self._capture.get()


def stored(calibrated: Calibrated) -> dict[str, object]:
    return json.loads(calibration_path(calibrated.spec).read_text())  # type: ignore[no-any-return]


def labelled() -> list[dict[str, Any]]:
    return [json.loads(line) for line in LABELS.read_text().splitlines() if line.strip()]


def expected_requests() -> int:
    """One request a labelled answer, two a pair (both orders)."""
    return sum(2 if row.get("scale") == "pairwise" else 1 for row in labelled())


def test_calibration_asks_once_per_answer_and_twice_per_pair(calibrated: Calibrated) -> None:
    assert calibrated.first_requests == expected_requests()
    assert f"asked the judge {expected_requests()} time(s), 0 reply(ies) from the cache" in calibrated.first_output


def test_a_second_calibration_is_answered_from_the_cache(calibrated: Calibrated) -> None:
    assert calibrated.second_requests == 0
    assert f"asked the judge 0 time(s), {expected_requests()} reply(ies) from the cache" in calibrated.second_output


def test_calibration_figures_are_those_of_the_judge_s_replies(calibrated: Calibrated) -> None:
    result = stored(calibrated)
    rows = result["rows"]
    assert isinstance(rows, list) and len(rows) == len(labelled())
    for row in rows:  # each label is what the reader makes of the stored replies
        labels = [read_reply(row["scale"], reply).label for reply in row["replies"]]
        if None in labels:
            assert row["judge"] == UNREAD
        elif row["scale"] == "pairwise":
            assert row["judge"] == {("A", "B"): "A", ("B", "A"): "B"}.get((labels[0], labels[1]), "tie")
        else:
            assert row["judge"] == labels[0]
    for scale, figures in result["scales"].items():  # type: ignore[attr-defined]
        mine = [r for r in rows if r["scale"] == scale]
        human, judged = [r["human"] for r in mine], [r["judge"] for r in mine]
        assert figures["n"] == len(mine)
        assert figures["accuracy"] == sum(h == j for h, j in zip(human, judged, strict=True)) / len(mine)
        assert figures["kappa"] == cohen_kappa(human, judged)
        assert figures["unreadable"] == judged.count(UNREAD)
    assert result["judge"] == {"base_url": calibrated.spec.base_url, "model": JUDGE_MODEL, "prompt_version": 1}


def test_the_cli_prints_accuracy_and_kappa_per_scale(calibrated: Calibrated) -> None:
    figures = stored(calibrated)["scales"]["pass/fail"]  # type: ignore[index]
    assert (
        f"{figures['accuracy']:.1%}" in calibrated.first_output and f"{figures['kappa']:.3f}" in calibrated.first_output
    )
    assert "pass/fail" in calibrated.first_output and "1-5" in calibrated.first_output


# --- the gate --------------------------------------------------------------------------------

ANY_ANSWER = {"type": "regex", "pattern": ""}  # every answer passes: the plain slice decides, and passes
SINGLE = {"type": "judge", "rubric": "answers the customer's question politely"}
PAIRWISE = {"type": "judge", "mode": "pairwise", "rubric": "the more helpful reply"}


def golden(tmp: Path) -> list[Record]:
    source = tmp / "golden.jsonl"
    rows = []
    for i, question in enumerate(["my desk arrived broken", "where is my order", "charged twice"]):
        prompt = ({"role": "user", "content": question},)
        answer = {"role": "assistant", "content": "ok"}
        rows.append(
            Record(source, i + 1, "chat", (*prompt, answer), id=f"j-{i}", slice="judged", checks=(SINGLE, PAIRWISE))
        )
        rows.append(Record(source, i + 11, "chat", (*prompt, answer), id=f"p-{i}", slice="plain", checks=(ANY_ANSWER,)))
    return rows


@dataclass
class Gated:
    reports: list[dict[str, object]]
    markdown: str
    requests: list[float]  # chat requests each gate sent


@pytest.fixture(scope="module")
def gated(
    served: Served, calibrated: Calibrated, tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Gated:
    work = tmp_path_factory.mktemp("judge-gate")
    spec = EvalSpec(probes=[], max_new_tokens=4, batch_size=3, judge=calibrated.spec, give_up_after=None)
    base = load_base(str(tiny_base_dir))
    model = attach_lora(base.model, LoraSpec(r=4, dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B large on purpose: the adapter must answer differently from the base
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 2.0)
    reports, requests = [], []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, served.keys["grader"])
        for run in range(2):
            before = chat_requests(served)
            report = run_gate(base, model, golden(work), spec, work / f"eval-{run}")
            requests.append(chat_requests(served) - before)
            reports.append(report.to_dict())
    return Gated(reports, (work / "eval-0" / "report.md").read_text(), requests)


def test_judge_checks_reach_the_server(gated: Gated) -> None:
    judged = [r for r in gated.reports[0]["rows"] if r["slice"] == "judged"]  # type: ignore[attr-defined]
    answers_differ = all(r["outputs"]["adapter"] != r["outputs"]["base"] for r in judged)
    assert answers_differ  # so pairwise asks: each row, two roles alone + the adapter against the base twice
    assert gated.requests[0] == len(judged) * (2 + 2)
    assert gated.reports[0]["judge"]["asked"] == gated.requests[0]  # type: ignore[index]


def test_a_second_gate_asks_the_judge_nothing(gated: Gated) -> None:
    assert gated.requests[1] == 0
    assert gated.reports[1]["judge"]["asked"] == 0 and gated.reports[1]["judge"]["from_cache"] == 12  # type: ignore[index]


def test_the_judge_slice_carries_its_calibrated_agreement(gated: Gated, calibrated: Calibrated) -> None:
    standing = gated.reports[0]["slices"]["judged"]["judge"]  # type: ignore[index]
    figures = stored(calibrated)["scales"]["pass/fail"]  # type: ignore[index]
    assert standing["agreement"]["pass/fail"] == figures
    assert "plain" in gated.reports[0]["slices"] and "judge" not in gated.reports[0]["slices"]["plain"]  # type: ignore[index, operator]
    judged_line = next(line for line in gated.markdown.splitlines() if line.startswith("| judged"))
    assert f"pass/fail kappa {figures['kappa']:.2f}" in judged_line


def test_a_judge_slice_below_min_agreement_is_advisory(gated: Gated, calibrated: Calibrated) -> None:
    report = gated.reports[0]
    standing = report["slices"]["judged"]["judge"]  # type: ignore[index]
    scales = stored(calibrated)["scales"]
    assert standing["kappa"] == min(scales["pass/fail"]["kappa"], scales["pairwise"]["kappa"])  # type: ignore[index]
    assert standing["kappa"] < 0.6  # the tiny judge's replies are unreadable: it agrees with nobody
    assert standing["decides"] is False and "below eval.judge.min_agreement 0.60" in standing["why"]
    assert report["verdict"] == "pass" and report["reasons"] == []  # decided by the plain slice
    assert any("slice 'judged'" in line for line in report["advisory"])  # type: ignore[attr-defined]


def test_an_unreadable_judge_reply_fails_the_row_as_an_error(gated: Gated) -> None:
    row = next(r for r in gated.reports[0]["rows"] if r["slice"] == "judged")  # type: ignore[attr-defined]
    single = row["judge"]["adapter"][0]  # the tiny judge's reply is nonsense, never "Verdict: PASS"
    assert single["label"] is None and single["error"] is True and single["reply"]
    assert row["passed"]["adapter"] is False
    assert any(f.startswith("judge: judge error: reply") for f in row["failures"]["adapter"])
    assert gated.reports[0]["slices"]["judged"]["judge"]["errors"]["adapter"] == 3  # type: ignore[index]
