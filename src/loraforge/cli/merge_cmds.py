"""`loraforge merge` and `loraforge export --for vllm`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console

console = Console()


class ExportTarget(StrEnum):
    vllm = "vllm"


def merge_command(
    adapter_dir: Path = typer.Argument(..., help="Adapter directory (PEFT format with its loraforge.json)."),
    out_dir: Path = typer.Argument(..., help="Where to write the merged model directory (replaced whole)."),
    dtype: str = typer.Option(
        "fp32", "--dtype", help="Dtype of the merged weights: fp32, bf16 or fp16 (each has its own tolerance)."
    ),
    base: str | None = typer.Option(
        None, "--base", help="Base to merge into (alias, model dir, .gguf); default: the manifest's base.spec."
    ),
    max_prompts: int = typer.Option(16, "--max-prompts", min=1, help="Golden (or built-in) prompts compared."),
    greedy_tokens: int = typer.Option(32, "--greedy-tokens", min=1, help="Greedy tokens compared per prompt."),
) -> None:
    """Fold the adapter into its base and write a plain transformers model directory, after checking
    max |logit difference| and greedy answers against the unmerged adapter; refuses (exit 2, writes
    nothing) beyond the dtype's tolerance."""
    from loraforge.ship.merge import merge_adapter

    report = merge_adapter(adapter_dir, out_dir, dtype, base=base, max_prompts=max_prompts, greedy_tokens=greedy_tokens)
    console.print(
        f"max |logit difference| {report.max_abs_logit_diff:.3g} (tolerance {report.tolerance:g}, {report.dtype}) "
        f"over {report.n_prompts} prompts from {report.prompts_source}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"greedy answers equal ({report.greedy_tokens} tokens each): yes", highlight=False, soft_wrap=True)
    console.print(f"merged {report.variant} adapter written to {report.out_dir}", highlight=False, soft_wrap=True)


def export_command(
    adapter_dir: Path = typer.Argument(..., help="Adapter directory (PEFT format with its loraforge.json)."),
    target: ExportTarget = typer.Option(..., "--for", help="The server to export for: vllm."),
    out: Path = typer.Option(..., "--out", help="Directory to write the clean adapter to (replaced whole)."),
    max_lora_rank: int | None = typer.Option(
        None,
        "--max-lora-rank",
        help="vLLM --max-lora-rank (1, 8, 16, 32, 64, 128, 256, 320, 512); default: the "
        "smallest of those that fits the adapter's rank.",
    ),  # fmt: skip
    name: str | None = typer.Option(
        None, "--name", help="The adapter's name in --lora-modules; default: --out's name."
    ),
    base: str | None = typer.Option(None, "--base", help="Base to serve on; default: the manifest's base.spec."),
    vllm_check: bool = typer.Option(
        True,
        "--vllm-check/--no-vllm-check",
        help="With vLLM installed (make setup-vllm), compare its greedy tokens with loraforge's on the golden prompts.",
    ),  # fmt: skip
) -> int:
    """Check the adapter against what vLLM refuses, write a clean adapter directory and print the
    exact `vllm serve` line; exit 2 with the reasons when vLLM would refuse it, 1 when vLLM's tokens
    differ from loraforge's."""
    from loraforge.ship.export_vllm import export_for_vllm

    report = export_for_vllm(adapter_dir, out, max_lora_rank, name=name, base=base, check_with_vllm=vllm_check)
    console.print(
        f"exported for {target.value}: {report.out_dir} (rank {report.rank})", highlight=False, soft_wrap=True
    )
    for note in report.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    console.print("serve it with:", highlight=False, soft_wrap=True)
    typer.echo(report.serve_command)
    check = report.vllm_check
    if check is None:
        return 0
    if not check.ran:
        console.print(f"vLLM token check skipped: {check.reason}", highlight=False, soft_wrap=True)
        return 0
    if check.equal:
        console.print(
            f"vLLM {check.vllm_version} greedy tokens equal loraforge's on {check.n_prompts} prompts "
            f"({check.greedy_tokens} tokens each, {check.prompts_source})",
            highlight=False,
            soft_wrap=True,
        )
        return 0
    console.print(
        f"[bold red]vLLM greedy tokens differ from loraforge's:[/] {check.first_difference}",
        highlight=False,
        soft_wrap=True,
    )
    return 1


def register(app: typer.Typer) -> None:
    app.command("merge")(merge_command)
    app.command("export")(export_command)
