"""`loraforge eval CONFIG`: run the gate and exit 0 (pass) or 3 (block);
`loraforge eval calibrate-judge LABELS.jsonl`: measure eval.judge's agreement with human labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from loraforge.cli.common import SET_OPTION, load
from loraforge.cli.render import report_gate, signing_line
from loraforge.config import load_config

console = Console()
GATE = "gate"


class _GateByDefault(TyperGroup):
    """`loraforge eval CONFIG ...` is `loraforge eval gate CONFIG ...`, as it was before eval had subcommands."""

    default_command = GATE  # what arguments that name no subcommand run (tests/test_docs_commands.py reads it)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(
    cls=_GateByDefault,
    no_args_is_help=True,
    help="Gate an adapter (`loraforge eval CONFIG`, the same as `loraforge eval gate CONFIG`), or calibrate "
    "the LLM judge its judge checks use.",
)


@eval_app.command(GATE)
def eval_command(
    config_path: Path = typer.Argument(..., help="Config YAML."),
    adapter: Path | None = typer.Option(None, "--adapter", help="Adapter directory (default OUTPUT/adapter)."),
    against: Path | None = typer.Option(None, "--against", help="A previously shipped adapter to beat as well."),
    allow_new_golden: bool = typer.Option(
        False, "--allow-new-golden", help="Gate against a golden file whose hash changed since training."
    ),
    overrides: list[str] = SET_OPTION,
) -> None:
    """Score the golden set and probes on base vs adapter per slice, record the verdict in the adapter's
    manifest and card (re-signing with ship.key after a pass); exit 3 when the gate blocks."""
    from loraforge.pipeline.evaluate_run import EVAL_DIR_NAME
    from loraforge.pipeline.run import gate_and_record

    config = load(config_path, overrides)
    outcome = gate_and_record(config, adapter, against, allow_new_golden)
    adapter_dir = adapter or config.output / "adapter"
    if outcome.recorded:
        console.print(f"verdict recorded in {escape(str(adapter_dir / 'loraforge.json'))} and its model card")
        console.print(signing_line(outcome.signature, outcome.report.passed))
    else:
        where = escape(str(adapter_dir))
        console.print(f"[yellow]note[/]: {where} has no loraforge.json: the verdict is in the reports only")
    report_gate(console, outcome.report, config.output / EVAL_DIR_NAME)


@eval_app.command("calibrate-judge")
def calibrate_judge_command(
    labels: Path = typer.Argument(
        ..., help="jsonl of labelled answers: prompt, answer, rubric, label (scale: pass/fail or 1-5)."
    ),
    config_path: Path = typer.Option(..., "--config", help="Config YAML whose eval.judge names the endpoint."),
    overrides: list[str] = SET_OPTION,
) -> None:
    """Ask eval.judge to grade every labelled answer and report its agreement with the labels
    (accuracy and Cohen's kappa per scale); the result is stored where the gate reads it
    (eval.judge.calibration), so judge slices below eval.judge.min_agreement stay advisory."""
    from loraforge.evaluate.calibration import calibrate_judge

    # only eval.judge is read: the data files need not exist
    spec = load_config(config_path, overrides or [], check_files=False).eval.judge
    result, path, judge = calibrate_judge(labels, spec)
    table = Table(title=f"judge {escape(str(spec.model))} at {escape(str(spec.base_url))} vs {escape(str(labels))}")
    for column in ("scale", "n", "accuracy", "kappa", "unreadable", f"kappa >= {spec.min_agreement:.2f}"):
        table.add_column(column, justify="left" if column == "scale" else "right")
    for scale, agreement in result.scales.items():
        meets = "yes: decides" if agreement.kappa >= spec.min_agreement else "no: advisory"
        table.add_row(
            scale,
            str(agreement.n),
            f"{agreement.accuracy:.1%}",
            f"{agreement.kappa:.3f}",
            str(agreement.unreadable),
            meets,
        )
    console.print(table)
    console.print(f"asked the judge {judge.asked} time(s), {judge.from_cache} reply(ies) from the cache")
    console.print(f"calibration: {escape(str(path))}")


def baseline_command(
    config_path: Path = typer.Argument(..., help="Config YAML (data.train and data.golden are read)."),
    overrides: list[str] = SET_OPTION,
) -> None:
    """Before training: score the base alone and the base prompted with eval.few_shot.k training rows
    on the golden set, and say per slice whether prompting may already be enough (no adapter needed).
    Both halves are cached, so the gate after `loraforge train` does not pay for them again."""
    from loraforge.pipeline.evaluate_run import BASELINE_DIR_NAME, baseline_run

    config = load(config_path, overrides)
    report = baseline_run(config)
    table = Table(title="prompting baseline: pass rate per golden slice")
    for column in ("slice", "n", "base", "few-shot"):
        table.add_column(column, justify="left" if column == "slice" else "right")
    for name, score in report.slices.items():
        table.add_row(name, str(score.n), *(f"{score.rate(r):.1%}" for r in report.roles))
    console.print(table)
    shots = report.info["few_shot"]
    seconds = report.info["seconds"]
    console.print(
        f"few-shot: {shots['k']} examples a prompt ({shots['select']}), {shots['mean_examples']} held on average "
        f"within eval.few_shot.max_prompt_tokens={shots['max_prompt_tokens']}; base {seconds['base']:.0f} s "
        f"({report.info['cache']['base']}), few-shot {seconds['few_shot']:.0f} s ({report.info['cache']['few_shot']})"
    )
    for line in report.readings:
        console.print(f"  {escape(line)}")
    console.print(f"reports: {escape(str(config.output / BASELINE_DIR_NAME))}/report.{{json,md,html}}")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
    app.command("baseline")(baseline_command)
