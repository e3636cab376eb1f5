"""OUTPUT/metrics.jsonl (always) plus TensorBoard / MLflow when installed and named in train.log_to."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loraforge.errors import TrainError
from loraforge.files import write_text_atomic

METRICS_NAME = "metrics.jsonl"


class MetricsLog:
    """One JSON object per event ({"event": "train"|"eval"|"stop", "step": N, ...})."""

    def __init__(self, out_dir: Path, log_to: Sequence[str] = (), write: bool = True) -> None:
        """`write=False` (processes other than the main one) keeps records in memory only."""
        self.path = out_dir / METRICS_NAME
        self.write = write
        self.records: list[dict[str, Any]] = read_metrics(self.path)
        self._writers = [_open_writer(name, out_dir) for name in log_to] if write else []

    def truncate_after(self, step: int) -> None:
        """On resume, forget events the killed run logged after its last checkpoint."""
        self.records = [r for r in self.records if int(r.get("step", 0)) <= step]
        if self.write:
            write_text_atomic(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))

    def log(self, event: str, step: int, **values: Any) -> dict[str, Any]:
        record = {"event": event, "step": step, **values}
        self.records.append(record)
        if not self.write:
            return record
        # appended, not rewritten: a torn last line is dropped by read_metrics on resume
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        numbers = {k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        for writer in self._writers:
            writer(event, step, numbers)
        return record


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the line a killed process was writing
    return records


def _open_writer(name: str, out_dir: Path) -> Any:
    if name == "tensorboard":
        if importlib.util.find_spec("tensorboard") is None:
            raise TrainError("train.log_to names tensorboard, which is not installed; pip install tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        board = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

        def write_board(event: str, step: int, numbers: dict[str, float]) -> None:
            for key, value in numbers.items():
                board.add_scalar(f"{event}/{key}", value, step)
            board.flush()

        return write_board
    if name == "mlflow":
        if importlib.util.find_spec("mlflow") is None:
            raise TrainError("train.log_to names mlflow, which is not installed; pip install mlflow")
        import mlflow

        def write_mlflow(event: str, step: int, numbers: dict[str, float]) -> None:
            mlflow.log_metrics({f"{event}/{k}": v for k, v in numbers.items()}, step=step)

        return write_mlflow
    raise TrainError(f"train.log_to: unknown writer {name!r}; use tensorboard or mlflow")
