"""OUTPUT/loss.png: train and eval loss against step, redrawn at every eval."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loraforge.files import write_bytes_atomic


def plot_losses(records: Sequence[dict[str, Any]], out_path: Path, best_step: int | None = None) -> Path:
    """Draw the curves from metrics.jsonl records (events "train" and "eval")."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    from matplotlib.figure import Figure

    train = [(r["step"], r["loss"]) for r in records if r.get("event") == "train"]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("event") == "eval"]
    figure = Figure(figsize=(7, 4), dpi=110)
    axes = figure.add_subplot()
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", linewidth=1)
    if evals:
        axes.plot(*zip(*evals, strict=True), label="eval loss", color="tab:orange", marker="o", linewidth=1.5)
    if best_step is not None:
        axes.axvline(best_step, color="tab:green", linestyle="--", linewidth=1, label=f"best (step {best_step})")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (mean per loss token)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_bytes_atomic(out_path, buffer.getvalue())
    return out_path
