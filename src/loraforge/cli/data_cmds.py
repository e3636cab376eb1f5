"""`loraforge prepare CONFIG [--set k=v] [--show N]`: run the data stage, print what it did."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from loraforge.cli.common import SET_OPTION, load
from loraforge.cli.render import data_summary
from loraforge.recipe import DEFAULT_BASE, DISTILL_BATCH, DISTILL_MAX_NEW_TOKENS

console = Console()


def prepare(
    config_path: Path = typer.Argument(..., help="Config YAML."),
    overrides: list[str] = SET_OPTION,
    show: int = typer.Option(0, "--show", min=0, help="Render N training examples with trained tokens marked."),
) -> None:
    """Validate, clean and tokenize the data; print a summary and write OUTPUT/data_report.json.

    Bad rows stop it with every problem listed (exit 2, nothing written) unless data.on_error=skip.
    """
    from loraforge.data import render_marked
    from loraforge.models import base_context_length, load_tokenizer
    from loraforge.pipeline.prepare import prepare_for_run

    config = load(config_path, overrides)
    tokenizer = load_tokenizer(config.base)
    data = prepare_for_run(config, tokenizer, base_context_length(config.base), progress=True)
    console.print(data_summary(data.report, config.output))
    color = sys.stdout.isatty()
    for example in data.train[:show]:
        marker = "trained tokens in green" if color else "trained tokens in [[brackets]]"
        console.rule(escape(f"line {example.line} ({example.n_loss_tokens} trained tokens; {marker})"))
        # print, not console.print: the text is the model's input, so no rich markup may alter it
        typer.echo(render_marked(example, tokenizer, color=color))


def distill(
    prompts_path: Path = typer.Argument(..., help="jsonl of prompt rows: messages ending on a user turn, or prompt."),
    out: Path = typer.Option(..., "--out", help="Where to write the replay rows (jsonl)."),
    base: str = typer.Option(DEFAULT_BASE, "--base", help="Base that answers: alias, HF directory or .gguf."),
    max_new_tokens: int = typer.Option(DISTILL_MAX_NEW_TOKENS, "--max-new-tokens", min=1, help="Answer cap."),
    batch_size: int = typer.Option(DISTILL_BATCH, "--batch-size", min=1, help="Prompts generated together."),
    template: Path | None = typer.Option(
        None, "--template", help="Jinja chat template the base answers in: the run's data.template (default: its own)."
    ),
) -> None:
    """Answer each prompt with the base itself (greedy) and write training rows for data.replay.

    Mixing these rows into training keeps the base's general skills (self-distillation replay).
    Unfinished answers and answers failing a row's `checks` are dropped.
    """
    from loraforge.data import resolve_chat_template
    from loraforge.models import load_base
    from loraforge.pipeline.distill import distill as run_distill
    from loraforge.pipeline.distill import read_prompts, write_rows

    prompts = read_prompts(prompts_path)
    loaded = load_base(base)
    chat_template = resolve_chat_template(loaded.tokenizer, template)
    console.print(f"answering {len(prompts)} prompts with {base} (greedy, up to {max_new_tokens} tokens)")
    result = run_distill(
        loaded, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=True,
        chat_template=chat_template,
    )  # fmt: skip
    write_rows(out, result.rows)
    dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(result.dropped.items())) or "none"
    console.print(f"wrote {len(result.rows)} rows to {out} (dropped: {dropped})", highlight=False)
    for line in result.examples_dropped[:5]:
        console.print(f"  dropped {escape(line)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare)
    app.command("distill")(distill)
