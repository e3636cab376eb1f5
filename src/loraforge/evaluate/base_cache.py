"""The base's gate answers, cached: the same base on the same cases gives the same answers.

Every `loraforge train` and `loraforge eval` scores the base on the golden set and the probes
again, and on a CPU that is half the gate (about 3 minutes on the demo). What the base answers
depends only on what the key below holds: the base weights (the file fingerprint and a checksum
of the weights in memory), the tokenizer, chat template and generation config, the cases in order
(prompt, reference, checks, generation budget), when hopeless answers end (eval.give_up_after),
the batch size (rows are left-padded together), the dtype and device the base ran in, and the
library versions. An entry is one JSON file under
LORAFORGE_HOME/gate-base/, written atomically; delete the folder to drop them all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from loraforge.data.cache import tokenizer_sha256
from loraforge.evaluate.scoring import Case
from loraforge.files import loraforge_home, write_json_atomic

# bump when scoring changes what it returns for the same inputs;
# 2: batches in prompt-length order, a prefix shared by a batch's prompts encoded once
# 3: answers that can no longer pass end early (eval.give_up_after, part of the key)
# 4: a budget's cases split into batches of even sizes
CACHE_VERSION = 4
Scored = tuple[list[str], list[tuple[float, int]]]  # answers, (summed reference NLL, token count) per case


def base_cache_key(
    fingerprint: str,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    cases: Sequence[Case],
    batch_size: int,
    give_up_after: int | None = None,
    chat_template: str | None = None,
) -> str:
    """sha256 over everything the base's answers and reference losses depend on."""
    parameter = next(model.parameters())
    generation = getattr(model, "generation_config", None)
    payload = {
        "version": CACHE_VERSION,
        "base": fingerprint,
        "weights": weights_checksum(model),
        "tokenizer": tokenizer_sha256(tokenizer),
        "chat_template": chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None),
        "generation": generation.to_json_string() if generation is not None else None,
        "cases": [[list(c.prompt), c.reference, c.max_new_tokens, list(c.checks)] for c in cases],
        "batch_size": batch_size,
        "give_up_after": give_up_after,
        "dtype": str(parameter.dtype),
        "device": parameter.device.type,
        "libraries": {name: version(name) for name in ("torch", "transformers", "peft")},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@torch.no_grad()
def weights_checksum(model: torch.nn.Module) -> str:
    """A checksum of the base weights as they are in memory, not as they were on disk: a base
    changed after loading (PiSSA's residual, a 4-bit quantisation, an edit in a test) must miss.
    Per parameter: name, shape, dtype and two sums on its own device (no copy to the CPU)."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if "lora_" in name:  # the adapter: the base role runs with it disabled
            continue
        # a base wrapped by PEFT and the bare base (`loraforge baseline`) are the same weights
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        values = param.detach().float()
        sums = torch.stack([values.sum(), values.abs().sum()]).tolist()
        digest.update(f"{name}|{tuple(param.shape)}|{param.dtype}|{sums[0]!r}|{sums[1]!r};".encode())
    return digest.hexdigest()


def cache_path(key: str) -> Path:
    return loraforge_home() / "gate-base" / f"{key}.json"


def load_scored(key: str, n_cases: int) -> Scored | None:
    """The cached answers and losses, or None when absent or unreadable (then the base is scored)."""
    try:
        entry: dict[str, Any] = json.loads(cache_path(key).read_text(encoding="utf-8"))
        answers = [str(a) for a in entry["answers"]]
        nll = [(float(s), int(n)) for s, n in entry["nll"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (answers, nll) if len(answers) == len(nll) == n_cases else None


def store_scored(key: str, scored: Scored) -> None:
    answers, nll = scored
    write_json_atomic(cache_path(key), {"answers": answers, "nll": [list(pair) for pair in nll]})
