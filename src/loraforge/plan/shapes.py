"""Model shapes from config.json alone: the model is built on the meta device, so an 80-layer
70B base costs no memory, and `base` may be a directory that holds nothing but config.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from loraforge.config import LoraSpec
from loraforge.errors import ModelError
from loraforge.models import linear_module_names, resolve_base


@dataclass(frozen=True)
class LinearGroup:
    """Every linear module that shares one short name (q_proj of all layers)."""

    name: str
    in_features: int
    out_features: int
    count: int

    @property
    def params(self) -> int:
        return self.in_features * self.out_features * self.count


@dataclass(frozen=True)
class ModelShape:
    base: str
    architecture: str
    layers: int
    hidden_size: int
    intermediate_size: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int
    tied_embeddings: bool
    total_params: int  # unique parameters (tied embeddings counted once), as PEFT counts them
    linears: tuple[LinearGroup, ...]  # every nn.Linear but lm_head, in model order
    lm_head_params: int  # the output projection's weight count, tied or not (its matmul runs either way)

    @property
    def linear_params(self) -> int:
        """Weights a 4-bit load quantises: every linear layer but the output head."""
        return sum(group.params for group in self.linears)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def config_dir(base: str) -> Path:
    """A directory with config.json: the base itself when it is one, else the resolved alias/GGUF."""
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"base '{base}': directory has no config.json; point at a Hugging Face model directory")
        return path
    return resolve_base(base)


def build_meta_model(base: str) -> nn.Module:
    """The causal LM for `base` with every tensor on the meta device (shapes only, no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = config_dir(base)
    _check_model_type(base, directory / "config.json")
    try:
        config = AutoConfig.from_pretrained(str(directory))
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ModelError(f"base '{base}': cannot read {directory / 'config.json'}: {exc}; fix or replace it") from exc
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model


def _check_model_type(base: str, config_json: Path) -> None:
    from transformers import CONFIG_MAPPING, __version__

    try:
        model_type = json.loads(config_json.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return  # unreadable: AutoConfig names the problem below
    if isinstance(model_type, str) and model_type not in CONFIG_MAPPING:
        raise ModelError(
            f"base '{base}': {config_json} has model_type {model_type!r}, which transformers {__version__} does not "
            "know; fix model_type (e.g. 'llama', 'qwen2', 'mistral') or upgrade transformers"
        )


def model_shape(base: str, model: nn.Module | None = None) -> ModelShape:
    """Read the dimensions the estimate needs from a meta-device model of `base`."""
    model = model if model is not None else build_meta_model(base)
    config = model.config
    groups: dict[str, LinearGroup] = {}
    names = set(linear_module_names(model))
    for full_name, module in model.named_modules():
        short = full_name.rsplit(".", 1)[-1]
        if not isinstance(module, nn.Linear) or short not in names:
            continue
        seen = groups.get(short)
        count = seen.count + 1 if seen else 1
        groups[short] = LinearGroup(short, module.in_features, module.out_features, count)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    head_weight = getattr(head, "weight", None)
    return ModelShape(
        base=base,
        architecture=(getattr(config, "architectures", None) or [type(model).__name__])[0],
        layers=int(getattr(config, "num_hidden_layers", 0) or 0),
        hidden_size=hidden,
        intermediate_size=int(getattr(config, "intermediate_size", 0) or 4 * hidden),
        heads=heads,
        kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(config, "head_dim", None) or (hidden // max(heads, 1))),
        vocab_size=int(getattr(config, "vocab_size", 0) or 0),
        context_length=int(getattr(config, "max_position_embeddings", 0) or 0),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        total_params=sum(p.numel() for p in model.parameters()),
        linears=tuple(groups.values()),
        lm_head_params=int(head_weight.numel()) if isinstance(head_weight, torch.Tensor) else 0,
    )


def target_groups(shape: ModelShape, targets: str | list[str]) -> list[LinearGroup]:
    """The linear groups LoRA adapts: all-linear = every one but lm_head, or the named ones."""
    if targets == "all-linear":
        return list(shape.linears)
    available = {group.name: group for group in shape.linears}
    unknown = [t for t in targets if t not in available]
    if unknown:
        raise ModelError(
            f"lora.targets: {', '.join(unknown)} match no linear module in {shape.base}; "
            f"its linear modules are: {', '.join(available)} (or use all-linear)"
        )
    return [available[t] for t in targets]


def trainable_by_module(shape: ModelShape, spec: LoraSpec) -> dict[str, int]:
    """Adapter parameters per target module name: r*(in+out) per layer (A is r x in, B is out x r),
    plus DoRA's magnitude vector (one value per output feature); with lora.top_layers, only that
    many layers of each module (one instance per decoder layer)."""
    counts: dict[str, int] = {}
    for group in target_groups(shape, spec.targets):
        per_module = spec.r * (group.in_features + group.out_features)
        if spec.variant == "dora":
            per_module += group.out_features
        adapted = group.count if spec.top_layers is None else min(group.count, spec.top_layers)
        counts[group.name] = per_module * adapted
    return counts
