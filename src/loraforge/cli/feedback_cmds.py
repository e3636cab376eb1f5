"""`loraforge feedback export|stats`: the feedback `loraforge serve` collected, as DPO pairs or counts.

Both open the server's store without creating one and without changing its retention
(`FeedbackStore(..., retention_days=None, create=False)`), so they are safe beside a running server.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from loraforge.errors import LoraforgeError
from loraforge.serve.feedback import FeedbackStore, default_state_dir, feedback_path

console = Console()
feedback_app = typer.Typer(
    help="Feedback on served completions: export preference pairs for the next DPO round, or count it.",
    no_args_is_help=True,
)
STATE_DIR_OPTION = typer.Option(
    None, "--state-dir", help="The directory `loraforge serve --state-dir` used (default $LORAFORGE_HOME/serve)."
)


class ExportFormat(StrEnum):
    dpo = "dpo"


def _open(state_dir: Path | None) -> FeedbackStore:
    return FeedbackStore(feedback_path(state_dir or default_state_dir()), retention_days=None, create=False)


@feedback_app.command("export")
def export(
    out: Path = typer.Argument(..., help="The jsonl file to write (replaced atomically)."),
    tenant: str = typer.Option(..., "--tenant", help="Export this tenant's feedback only."),
    export_format: str = typer.Option(
        "dpo", "--format", help='Output format: dpo ({"prompt", "chosen", "rejected"} per line).'
    ),
    model: str | None = typer.Option(None, "--model", help="Keep only completions served by this model."),
    state_dir: Path | None = STATE_DIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the export report as JSON."),
) -> None:
    """Write TENANT's feedback as preference pairs: edits (edit over original) and, per prompt, an
    upvoted answer over a downvoted one; identical pairs are skipped and counted."""
    known = [f.value for f in ExportFormat]
    if export_format not in known:
        raise LoraforgeError(f"--format {export_format!r}: unknown export format; use one of: {', '.join(known)}")
    with _open(state_dir) as store:
        report = store.export_dpo(tenant, out, model=model)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2, sort_keys=True))
        return
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(report.skipped.items())) or "none"
    console.print(
        f"wrote {report.pairs} pairs to {report.out} ({report.edited_pairs} from edits, "
        f"{report.rated_pairs} from up/down votes); skipped: {skipped}",
        highlight=False,
        soft_wrap=True,
    )
    if report.pairs == 0:
        console.print(f"no preference pairs for tenant {tenant!r}: the file is empty", highlight=False)


@feedback_app.command("stats")
def stats(
    tenant: str | None = typer.Option(None, "--tenant", help="Count one tenant only (default: every tenant)."),
    state_dir: Path | None = STATE_DIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON with stable keys instead of a table."),
) -> None:
    """Completions recorded and feedback received, per tenant, within the store's retention."""
    with _open(state_dir) as store:
        rows = store.stats(tenant)
        retention_days = store.retention_days
    if as_json:
        typer.echo(json.dumps([row.as_dict() for row in rows], indent=2, sort_keys=True))
        return
    table = Table(title=f"feedback (last {retention_days:g} days)")
    for column in ("tenant", "completions", "upvoted", "downvoted", "edited"):
        table.add_column(column, justify="left" if column == "tenant" else "right")
    for row in rows:
        table.add_row(row.tenant, str(row.completions), str(row.upvoted), str(row.downvoted), str(row.edited))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(feedback_app, name="feedback")
