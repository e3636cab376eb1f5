"""The checks an adapter directory must pass before serve runs it (docs/serve-security.md).

Each check raises `Refusal(check, reason)`; `serve.adapters.load_verified` runs them in order and
turns the first refusal into `AdapterRefused` with the model asked for. Kept apart from the store
so the store reads as lookup and cache, and each check as the one rule it enforces.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from loraforge.errors import ModelError
from loraforge.models import read_manifest
from loraforge.ship.signing import verify_adapter

ADAPTER_CONFIG = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# torch.load on these runs arbitrary code (pickle); a directory holding one is refused outright,
# even beside a safetensors file, so no later tool picks the pickle up by mistake.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
PEFT_PREFIX = "base_model.model."  # PEFT saves factors under the wrapper's path to the base model
# PEFT options that change the forward beyond scale * x @ A.T @ B.T (or need a base other than the
# one served): an engine computing plain LoRA would serve something else than was trained.
FORWARD_CHANGING_OPTIONS = (
    "use_dora",
    "modules_to_save",
    "rank_pattern",
    "alpha_pattern",
    "lora_bias",
    "fan_in_fan_out",
    "layer_replication",
    "trainable_token_indices",
    "target_parameters",
    "alora_invocation_tokens",
    "use_bdlora",
    "use_qalora",
)
# init_lora_weights that leave the base residualised (W - BA): the adapter needs that changed base
# unless it was converted to plain LoRA on save (then PEFT writes init_lora_weights=true).
RESIDUAL_INITS = ("pissa", "olora", "corda", "loftq")


# AdapterRefused.check, in the order the checks run (docs/serve-security.md)
REFUSAL_CHECKS = (
    "manifest",
    "base_fingerprint",
    "chat_template",
    "signature",
    "safetensors_only",
    "adapter_config",
    "weights",
    "tensors",
    "engine",  # the engine cannot serve it (vLLM: a rank above --max-lora-rank, DoRA, bias terms)
)


class Refusal(Exception):
    """One failed check (`check`: one of REFUSAL_CHECKS); load_verified turns it into AdapterRefused."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(reason)
        self.check = check


def check_manifest(
    path: Path, base_spec: str, base_fingerprint: str, base_template: str | None, log: logging.Logger
) -> dict[str, Any]:
    """The manifest, when it names the served base and its template matches its hash."""
    try:
        manifest = read_manifest(path)
    except (ModelError, OSError, UnicodeDecodeError) as exc:
        raise Refusal("manifest", f"unreadable manifest: {exc}") from exc
    if manifest is None:
        raise Refusal(
            "manifest",
            "no loraforge.json manifest, so nothing says which base it was trained on; publish an adapter "
            "trained by loraforge (its OUTPUT/adapter carries one)",
        )
    trained_on = (manifest.get("base") or {}).get("fingerprint")
    if trained_on != base_fingerprint:
        raise Refusal(
            "base_fingerprint",
            f"trained on base {trained_on}, but the served base {base_spec} is {base_fingerprint}; "
            "serve it on the base it was trained on, or train it again on this one",
        )
    template = manifest.get("chat_template")
    if not isinstance(template, dict):  # format 1 stored the text alone, with no hash to check
        raise Refusal(
            "chat_template",
            "the manifest (format 1) records no chat_template.sha256, so the template served cannot be "
            "checked against the one trained; train or export the adapter again (format 2)",
        )
    actual = hashlib.sha256(template["text"].encode("utf-8")).hexdigest()
    if actual != template["sha256"]:
        raise Refusal(
            "chat_template",
            f"chat_template.text hashes to {actual[:12]}, but chat_template.sha256 records "
            f"{template['sha256'][:12]}: the template was changed after training; publish the adapter again",
        )
    if base_template is not None and template["text"] != base_template:
        log.info("adapter %s is served with its own chat template (it differs from the base's)", path)
    return manifest


def check_signature(path: Path, public_key: Path) -> None:
    try:
        verify_adapter(path, public_key)
    except ModelError as exc:  # SignatureError: unsigned, other key, forged, files changed (named)
        raise Refusal("signature", f"signature check failed: {exc}") from exc


def refuse_unsafe_files(path: Path) -> None:
    files = list(path.rglob("*"))
    links = sorted(p.relative_to(path).as_posix() for p in files if p.is_symlink())
    if links:  # publish copies files, never links; a link placed later can point anywhere on the server
        raise Refusal(
            "safetensors_only", f"symbolic links {', '.join(links)} in the adapter; publish the adapter again"
        )
    pickles = sorted(p.relative_to(path).as_posix() for p in files if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise Refusal(
            "safetensors_only",
            f"pickle weights {', '.join(pickles)} (loading them can run code); serve reads safetensors "
            "only: save the adapter with safe_serialization=True and publish it again",
        )
    if not (path / WEIGHTS_NAME).is_file():
        raise Refusal("safetensors_only", f"no {WEIGHTS_NAME}; serve reads safetensors only: save the adapter again")


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refusal("adapter_config", f"cannot read {ADAPTER_CONFIG} ({exc}); save the adapter again") from exc
    if not isinstance(config, dict):
        raise Refusal("adapter_config", f"{ADAPTER_CONFIG} is not a JSON object; save the adapter again")
    if config.get("peft_type") != "LORA":
        raise Refusal(
            "adapter_config",
            f"{ADAPTER_CONFIG} peft_type is {config.get('peft_type')!r}; serve runs LoRA adapters only",
        )
    if config.get("use_dora"):
        raise Refusal(
            "adapter_config", "DoRA (use_dora=true): the engines serve plain LoRA only; train with lora.variant lora"
        )
    set_options = [key for key in FORWARD_CHANGING_OPTIONS if config.get(key)]
    if set_options:
        shown = ", ".join(f"{key}={config[key]!r}" for key in set_options)
        raise Refusal(
            "adapter_config",
            f"{ADAPTER_CONFIG} sets {shown}, which plain LoRA serving cannot compute; train without it",
        )
    if config.get("bias", "none") != "none":
        raise Refusal(
            "adapter_config", f"{ADAPTER_CONFIG} bias={config['bias']!r} trains base biases; serve needs bias='none'"
        )
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(RESIDUAL_INITS):
        raise Refusal(
            "adapter_config",
            f"init_lora_weights={init!r}: the adapter needs the residualised base it was trained on; save it "
            "converted to plain LoRA (path_initial_model_for_weight_conversion) and publish that",
        )
    return config


def rank_and_scale(config: dict[str, Any]) -> tuple[int, float]:
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise Refusal("adapter_config", f"{ADAPTER_CONFIG} r={r!r} is not a rank (a whole number from 1)")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise Refusal("adapter_config", f"{ADAPTER_CONFIG} lora_alpha={alpha!r} is not a number")
    # rsLoRA scales by alpha/sqrt(r) so higher ranks keep learning; PEFT's use_rslora flag
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return r, float(scale)


def read_tensors(weights_path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise Refusal(
            "weights",
            f"{WEIGHTS_NAME} is truncated or corrupt ({type(exc).__name__}: {exc}); publish the adapter again",
        ) from exc


def lora_factors(
    tensors: dict[str, torch.Tensor], rank: int, shapes: Mapping[str, tuple[int, int]]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) in fp32 by module name, every tensor accounted for and shaped for its module."""
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, part = _split_key(key, shapes)
        halves.setdefault(module, {})[part] = tensor
    if not halves:
        raise Refusal("tensors", f"{WEIGHTS_NAME} holds no LoRA factors: it would change nothing (served as the base)")
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, parts in sorted(halves.items()):
        missing = [p for p in ("A", "B") if p not in parts]
        if missing:
            raise Refusal("tensors", f"{module} has no lora_{missing[0]} factor; save the adapter again")
        in_features, out_features = shapes[module]
        a, b = parts["A"], parts["B"]
        if tuple(a.shape) != (rank, in_features) or tuple(b.shape) != (out_features, rank):
            raise Refusal(
                "tensors",
                f"{module}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit the base's "
                f"({in_features} -> {out_features}) at r={rank} (want A {(rank, in_features)}, B "
                f"{(out_features, rank)}); it was trained on another base",
            )
        if not a.is_floating_point() or not b.is_floating_point():
            raise Refusal("tensors", f"{module}: factors of dtype {a.dtype}/{b.dtype}; LoRA factors are floats")
        a32, b32 = a.to(torch.float32).contiguous(), b.to(torch.float32).contiguous()
        if not (torch.isfinite(a32).all() and torch.isfinite(b32).all()):
            raise Refusal("tensors", f"{module}: factors hold NaN or inf (a diverged run); do not serve it")
        factors[module] = (a32, b32)
    return factors


def _split_key(key: str, shapes: Mapping[str, tuple[int, int]]) -> tuple[str, str]:
    """PEFT's `base_model.model.MODULE.lora_A.weight` -> (MODULE, "A"); refuse anything else."""
    if "lora_magnitude_vector" in key:
        raise Refusal("tensors", f"tensor {key} is a DoRA magnitude; the engines serve plain LoRA only")
    for part in ("A", "B"):
        suffix = f".lora_{part}.weight"
        if key.startswith(PEFT_PREFIX) and key.endswith(suffix):
            module = key[len(PEFT_PREFIX) : -len(suffix)]
            if module not in shapes:
                raise Refusal(
                    "tensors",
                    f"tensor {key} is for module {module}, which the served base has no linear layer "
                    "named; it was trained on another architecture or saved with another prefix",
                )
            return module, part
    raise Refusal(
        "tensors", f"tensor {key} is not a LoRA factor (base_model.model.MODULE.lora_A/B.weight); serve runs plain LoRA"
    )
