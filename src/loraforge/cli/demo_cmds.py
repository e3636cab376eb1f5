"""`loraforge demo`: the main job on the embedded default base, rendered step by step."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

from loraforge.cli.common import SET_OPTION
from loraforge.cli.render import data_summary, report_gate, train_table
from loraforge.errors import GateBlocked
from loraforge.recipe import DEFAULT_BASE

console = Console()


def demo(
    base: str = typer.Option(DEFAULT_BASE, help="Base to run the demo on."),
    data_dir: Path = typer.Option(Path("examples/support_tickets"), help="Folder with train.jsonl and golden.jsonl."),
    output: Path = typer.Option(Path("runs/demo"), help="Run directory."),
    quick: bool = typer.Option(False, help="A small slice and a few steps (under 3 minutes): shows the path only."),
    overrides: list[str] = SET_OPTION,
) -> None:
    """Take the embedded base from the bundled corpus to a gated adapter, and show each step."""
    from loraforge.pipeline.demo import demo_config, run_demo

    config = demo_config(data_dir, output, quick, base, overrides)
    result = run_demo(config, _show, serve_step=_serve)
    if result.gate is not None and not result.gate.passed:
        raise GateBlocked("the gate blocked the demo adapter:\n" + "\n".join(f"  - {r}" for r in result.gate.reasons))


def _show(step: str, payload: Any) -> None:
    if step == "note":
        console.print(f"[yellow]{escape(payload)}[/]")
        return
    if step == "time":
        _time(payload)
        return
    steps: dict[str, tuple[str, Callable[[Any], None]]] = {
        "base": ("1. the embedded base", _base),
        "data": ("2. the data", _data),
        "train": ("3. training", lambda run: console.print(train_table(run))),
        "gate": ("4. the eval gate", _gate),
        "side_by_side": ("5. base vs adapter", _side_by_side),
        "ship": ("6. sign and publish", _ship),
        "serve": ("7. serve it", _served),
        "paths": ("8. where everything is", _paths),
    }
    title, render = steps[step]
    console.print(Rule(title))
    render(payload)


def _base(payload: dict[str, Any]) -> None:
    card = payload["card"]
    console.print(
        f"{card.spec}: {card.architecture}, {card.parameters:,} parameters, {card.layers} layers, "
        f"loaded in {payload['load_seconds']:.1f}s\n[dim]fingerprint {card.fingerprint}[/]"
    )
    if payload.get("asked", "auto") != "auto":
        console.print(
            f"precision: {payload['dtype']} base, fp32 adapters (train.precision={payload['asked']}: "
            "training and the gate run in it)"
        )
    elif payload.get("dtype") == "bf16":
        console.print(f"precision: bf16 base, fp32 adapters ({payload.get('device', 'cpu')} has fast bf16)")
    elif payload.get("device") == "cuda":
        console.print("precision: fp32 (this GPU has no bf16)")
    else:
        console.print(
            "precision: fp32 [yellow](no GPU, and this CPU lacks avx512_bf16/AMX: training and the gate run in "
            'fp32, several times slower than the README\'s figures; see docs/PERFORMANCE.md, "The demo")[/]'
        )


def _data(payload: dict[str, Any]) -> None:
    from loraforge.data import render_marked

    console.print(data_summary(payload["report"], payload["output"]))
    if payload["example"] is not None:
        color = sys.stdout.isatty()
        text = render_marked(payload["example"], payload["tokenizer"], color=color)
        legend = "trained tokens in colour" if color else "trained tokens in [[brackets]]"
        console.print(f"one training example as the model sees it ({legend}):")
        console.print(text if color else escape(text), highlight=False)


def _gate(payload: dict[str, Any]) -> None:
    try:
        report_gate(console, payload["report"], payload["eval_dir"])
    except GateBlocked as blocked:
        console.print(f"[bold red]gate: block[/]\n{escape(str(blocked))}")  # demo() exits 3 after showing the rest


def _side_by_side(rows: list[dict[str, str]]) -> None:
    table = Table(show_lines=True)
    for column in ("golden prompt", "base", "adapter"):
        table.add_column(column, overflow="fold")
    for row in rows:
        mark = {"True": "[green]pass[/]", "False": "[red]fail[/]"}
        table.add_row(
            escape(row["question"]),
            f"{escape(row['base'])}\n{mark[row['base_passed']]}",
            f"{escape(row['adapter'])}\n{mark[row['adapter_passed']]}",
        )
    console.print(table)


def _ship(shipped: Any) -> None:
    if shipped.signature is None:
        console.print("adapter not signed (set ship.key to sign)")
    else:
        console.print(f"[green]adapter signed[/]: {escape(str(shipped.signature))}")
    if shipped.public_key is not None:
        public = escape(str(shipped.public_key))
        console.print(
            f"verified: {len(shipped.verified_files)} files ({escape(', '.join(shipped.verified_files))}) "
            f"against {public}\n  check it yourself: loraforge verify {escape(str(shipped.entry.path))} --pub {public}"
        )
    entry = shipped.entry
    console.print(
        f"registry entry: {escape(entry.name)} v{entry.version} (live) in {escape(str(shipped.registry))}\n"
        f"  {escape(str(entry.path))}"
    )


def _serve(config: Any, data: Any, shipped: Any) -> Any:
    """Serve the registry the demo published to and ask its adapter the first golden prompt through
    the openai client: the same server, checks and engine `loraforge serve` runs."""
    from loraforge.serve.first_request import answer_one  # deferred: the server's imports take seconds
    from loraforge.serve.server import ServeOptions

    record = next(r for r in data.golden if r.kind == "chat")
    prompt = [dict(m) for m in record.messages if m["role"] != "assistant"]
    precision = config.train.precision
    options = ServeOptions(
        registry=shipped.registry,
        base=config.base,
        tenants=config.output / "serve" / "tenants.yaml",
        public_key=shipped.public_key,  # the signature is checked again at load
        state_dir=config.output / "serve",
        dtype=precision if precision in ("fp32", "bf16") else "auto",
    )
    answer = answer_one(options, shipped.entry.name, prompt, max_tokens=config.eval.max_new_tokens)
    return {"answer": answer, "options": options, "question": prompt[-1]["content"]}


def _served(payload: dict[str, Any]) -> None:
    answer, options = payload["answer"], payload["options"]
    question = " ".join(payload["question"].split())
    text = " ".join(answer.answer.split())  # one line, as in the side-by-side step
    shown = escape(text[:300]) + ("..." if len(text) > 300 else "")
    if not text:
        shown = f"(blank: {len(answer.answer)} whitespace characters)"
    console.print(
        f"served on {answer.url} (up in {answer.start_seconds:.1f}s) and asked through the openai client as "
        f"tenant {answer.tenant}:\n  [dim]{escape(question[:160])}{'...' if len(question) > 160 else ''}[/]\n"
        f"  {escape(answer.model)} answered in {answer.request_seconds:.1f}s ({answer.completion_tokens} tokens, "
        f"finish {answer.finish_reason}):\n  [green]{shown}[/]"
    )
    pub = f" --pub {escape(str(options.public_key))}" if options.public_key is not None else ""
    console.print(
        "serve it yourself (keys are stored hashed; make one with `loraforge tenants add NAME --adapters "
        f"{escape(answer.model.split('@')[0])} --file {escape(str(options.tenants))}`):\n"
        f"  loraforge serve --registry {escape(str(options.registry))} --tenants {escape(str(options.tenants))}{pub}"
    )


def _paths(paths: dict[str, str]) -> None:
    for name, path in paths.items():
        console.print(f"  {name:12} {path}")
    console.print(
        "\nnext, on your own data:\n"
        "  loraforge init my.yaml --train my_train.jsonl --golden my_golden.jsonl\n"
        "  loraforge prepare my.yaml --show 2\n"
        "  loraforge plan my.yaml\n"
        "  loraforge train my.yaml"
    )


def _time(seconds: dict[str, Any]) -> None:
    roles = ", ".join(f"{role} {_clock(s)}" for role, s in seconds["gate_roles"].items())
    console.print(
        f"\nthe demo took {_clock(seconds['total'])}: base {_clock(seconds['base'])}, data {_clock(seconds['data'])}, "
        f"training {_clock(seconds['training'])}, "
        + (f"strength {_clock(seconds['strength'])}, " if seconds.get("strength") else "")
        + f"gate {_clock(seconds['gate'])}"
        + (f" ({roles})" if roles else "")
        + (f", serve {_clock(seconds['serve'])}" if seconds.get("serve") else "")
    )


def _clock(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
