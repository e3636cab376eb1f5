"""`loraforge advise` (the method wizard) and `loraforge plan CONFIG` (counts, memory, time, cost)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from loraforge.cli.common import SET_OPTION
from loraforge.config import load_config
from loraforge.errors import ConfigError

console = Console()
GIB = 1024**3


def _ask(key: str, interactive: bool, missing: list[str]) -> str | None:
    from loraforge.plan.advise import QUESTIONS

    if not interactive:
        missing.append(key)
        return None
    question = QUESTIONS[key]
    choices = f" [{'/'.join(question.choices)}]" if question.choices else ""
    return str(typer.prompt(f"{question.text}{choices}")).strip().lower()


def advise_cmd(
    gap: str | None = typer.Option(None, help="knowledge | prompt | behaviour | format"),
    instruct: bool | None = typer.Option(None, "--instruct/--pretrained", help="Is the base instruction-tuned?"),
    signal: str | None = typer.Option(None, help="verifier | preferences | demonstrations"),
    model_b: float | None = typer.Option(None, "--model-b", help="Base size in billions of parameters."),
    vram_gb: float | None = typer.Option(None, "--vram-gb", help="Memory of one GPU in GB."),
    examples: int | None = typer.Option(None, help="Number of training examples."),
    interactive: bool | None = typer.Option(
        None, "--interactive/--no-interactive", help="Ask for missing answers (default: when stdin is a terminal)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
) -> None:
    """Which method fits your problem: at most five questions, one answer with reasons and config keys."""
    from loraforge.plan.advise import GAPS, SIGNALS, Answers, advise, questions_for

    ask = sys.stdin.isatty() if interactive is None else interactive
    missing: list[str] = []
    gap = gap or _ask("gap", ask, missing)
    if gap is not None and gap not in GAPS:
        raise ConfigError([f"--gap {gap}: choose one of {', '.join(GAPS)}"], "advise")
    keys = [q.key for q in questions_for(gap)] if gap is not None else []  # type: ignore[arg-type]
    if "instruct" in keys and instruct is None:
        answer = _ask("instruct", ask, missing)
        instruct = None if answer is None else answer.startswith("y")
    if "signal" in keys:
        signal = signal or _ask("signal", ask, missing)
        if signal is not None and signal not in SIGNALS:
            raise ConfigError([f"--signal {signal}: choose one of {', '.join(SIGNALS)}"], "advise")
    if "memory" in keys and (model_b is None or vram_gb is None) and ask:
        model_b, vram_gb = _two_numbers(_ask("memory", ask, missing) or "")
    if "examples" in keys and examples is None and ask:
        examples = _ask_count("examples")
    if missing:
        flags = ", ".join(f"--{m.replace('_', '-')}" for m in missing)
        raise ConfigError([f"missing answers: pass {flags}, or run in a terminal to be asked"], "advise")
    answers = Answers(gap=gap, signal=signal or "demonstrations", model_b=model_b, vram_gb=vram_gb,  # type: ignore[arg-type]
                      examples=examples, instruct=True if instruct is None else instruct)  # fmt: skip
    advice = advise(answers)
    if as_json:
        typer.echo(json.dumps(advice.as_dict(), indent=2))
        return
    console.print(f"[bold]method:[/] {advice.method}")
    for reason in advice.reasons:
        console.print(f"  - {reason}", highlight=False)
    if advice.config_keys:
        sets = " ".join(f"--set {k}={v}" for k, v in advice.config_keys.items())
        console.print(f"[bold]config:[/] {sets}", highlight=False)


def _ask_count(key: str) -> int:
    """Ask until the answer is a whole number (`5000` or `5,000`)."""
    while True:
        answer = (_ask(key, True, []) or "0").replace(",", "").replace("_", "")
        try:
            return int(answer)
        except ValueError:
            console.print(f"{answer!r} is not a whole number of examples; type one, e.g. 5000", highlight=False)


def _two_numbers(text: str) -> tuple[float, float]:
    parts = text.replace(",", " ").split()
    try:
        return float(parts[0]), float(parts[1])
    except (IndexError, ValueError) as exc:
        raise ConfigError(
            [f"{text!r}: expected two numbers, base size in B and GPU GB, e.g. '8 24'"], "advise"
        ) from exc


def plan_cmd(
    config_path: Path = typer.Argument(..., help="Config YAML."),
    gpu: str | None = typer.Option(
        None, "--gpu", help="H100 | A100-80 | A10G | L4 | RTX4090 | CPU (default: the recommended tier)."
    ),  # fmt: skip
    tokens: int | None = typer.Option(
        None, "--tokens", min=1, help="Training tokens per epoch when there is no data report."
    ),  # fmt: skip
    price: float | None = typer.Option(None, "--price", min=0, help="Override the tier's $ per GPU-hour."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON (keys: docs/plan.md)."),
    overrides: list[str] = SET_OPTION,
) -> None:
    """Parameters, peak memory, time and cost of a config, from config.json shapes (no weights loaded)."""
    from loraforge.plan.estimate import plan_run
    from loraforge.plan.hardware import get_tier
    from loraforge.plan.shapes import model_shape

    config = load_config(config_path, overrides or [], check_files=False)  # plan needs no data file
    shape = model_shape(config.base)
    if gpu is None:  # size against the recommended tier's reference GPU
        draft = plan_run(config, get_tier("H100"), tokens, shape)
        tier_name = "RTX4090" if "consumer" in draft.recommendation.tier else "A100-80"
        gpu = "H100" if "FSDP" in draft.recommendation.tier else tier_name
    plan = plan_run(config, get_tier(gpu, price), tokens, shape)
    if as_json:
        typer.echo(json.dumps(plan.as_json(), indent=2))
        return
    _render(plan.as_json())


def _render(doc: dict[str, Any]) -> None:
    hw = doc["hardware"]
    counts = Table(title=f"plan: {doc['base']} ({doc['architecture']})", show_header=False)
    counts.add_column("what", style="bold")
    counts.add_column("value", justify="right")
    counts.add_row("trainable params", f"{doc['trainable_params']:,}")
    for name, n in doc["trainable_by_module"].items():
        counts.add_row(f"  {name}", f"{n:,}")
    counts.add_row("all params (base + adapter)", f"{doc['total_params']:,}")
    counts.add_row("adapter file", f"{doc['adapter_bytes'] / 2**20:,.1f} MiB")
    console.print(counts)
    checkpointing = "on" if doc["gradient_checkpointing"] else "off"
    title = (
        f"peak memory per device: {hw['name']} x {doc['gpus']}, {doc['precision']}, micro-batch "
        f"{doc['micro_batch_size']} x {doc['seq_len']} tokens, checkpointing {checkpointing}"
    )
    memory = Table(title=title)
    memory.add_column("component")
    memory.add_column("GiB", justify="right")
    for name, n in doc["memory"].items():
        memory.add_row(f"[bold]{name}[/]" if name == "total" else name, f"{n / GIB:,.2f}")
    ckpt = doc["activations_by_checkpointing"]
    memory.add_row("(activations, checkpointing off / on)", f"{ckpt['off'] / GIB:,.2f} / {ckpt['on'] / GIB:,.2f}")
    memory.add_row("usable on the device", f"{hw['usable_bytes'] / GIB:,.2f}")
    console.print(memory)
    if doc["optimizer_steps"] is not None:
        console.print(
            f"steps: {doc['optimizer_steps']:,} optimizer steps over {doc['epochs']:g} epochs, "
            f"{doc['examples_per_step']:g} examples a step ({doc['micro_batch_size']} rows x {doc['grad_accum']} "
            "micro-batches; train.grad_accum=auto sizes steps to the data)",
            highlight=False,
        )
    verdict = "[green]fits[/]" if doc["fits"] else "[red]does not fit[/]"
    console.print(f"{verdict}; largest micro-batch that fits: {doc['max_micro_batch']}", highlight=False)
    if doc["hours"] is None:
        console.print("time/cost: unknown token count; pass --tokens N or run `loraforge prepare`")
    else:
        console.print(
            f"time/cost: {doc['tokens']:,} tokens/epoch, {doc['flops_per_token'] / 1e9:,.2f} GFLOP/token -> "
            f"{_duration(doc['hours'])} on {doc['gpus']} x {hw['name']} at {hw['utilisation']:.0%} utilisation, "
            f"${doc['cost_usd']:,.2f} at ${hw['usd_per_hour']:.2f}/h",
            highlight=False,
        )
    console.print(f"[bold]recommended:[/] {doc['method']} on a {doc['tier']}", highlight=False)
    for reason in doc["reasons"]:
        console.print(f"  - {reason}", highlight=False)
    if doc["config_keys"]:
        console.print("  set: " + " ".join(f"--set {k}={v}" for k, v in doc["config_keys"].items()), highlight=False)
    for note in doc["assumptions"]:
        console.print(f"[dim]assumed: {note}[/]", highlight=False)


def _duration(hours: float) -> str:
    if hours < 1 / 60:
        return f"{hours * 3600:,.0f} s"
    return f"{hours * 60:,.1f} min" if hours < 1 else f"{hours:,.1f} h"


def register(app: typer.Typer) -> None:
    app.command("advise")(advise_cmd)
    app.command("plan")(plan_cmd)
