"""The data stage of a run from its config: the one entry point `loraforge prepare`, `loraforge
train` and the demo call, so they share one cache and one key, and a `prepare` is reused by the
`train` after it. It resolves `data.replay: builtin` (pipeline.replay) before the data stage runs.
"""

from __future__ import annotations

from typing import Any

from loraforge.config import Config
from loraforge.data import DATA_CACHE_SUBDIR, PreparedData, prepare_data
from loraforge.files import loraforge_home
from loraforge.pipeline.replay import resolve_replay


def prepare_for_run(
    config: Config, tokenizer: Any, context_length: int, *, write_report: bool = True, progress: bool = False
) -> PreparedData:
    """Prepare `config`'s data; `context_length` is the base's (models.context_length). With
    `write_report=False` the caller writes OUTPUT/data_report.json itself (write_data_report), once
    the run is known to go ahead."""
    return prepare_data(
        resolve_replay(config.data, config.base, tokenizer, progress=progress),
        tokenizer,
        seed=config.train.seed,
        context_length=context_length,
        out_dir=config.output if write_report else None,
        cache_dir=loraforge_home() / DATA_CACHE_SUBDIR,
        progress=progress,
    )
