"""Attach LoRA through PEFT from the `lora:` section of the config."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from loraforge.config import LoraSpec
from loraforge.errors import ModelError

# Modules that are linear but must never get an adapter: the output head ties to the
# embeddings on small models, and adapting it multiplies adapter size by vocab/hidden.
NEVER_TARGET = ("lm_head",)


def linear_module_names(model: nn.Module) -> list[str]:
    """Short names (last path component) of the linear layers LoRA can adapt, in model order."""
    names: list[str] = []
    for full_name, module in model.named_modules():
        if not _is_linear(module):
            continue
        short = full_name.rsplit(".", 1)[-1]
        if short in NEVER_TARGET or short in names:
            continue
        names.append(short)
    return names


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    # bitsandbytes Linear4bit subclasses nn.Linear in recent releases; keep a name check for older ones
    return type(module).__name__ in {"Linear4bit", "Linear8bitLt"}


def resolve_targets(model: nn.Module, targets: str | list[str]) -> list[str]:
    """`all-linear` -> every linear module name but lm_head; a list is checked against the model."""
    available = linear_module_names(model)
    if targets == "all-linear":
        if not available:
            raise ModelError("lora.targets=all-linear: the model has no linear layers to adapt")
        return available
    if not isinstance(targets, list):
        raise ModelError(
            f"resolve_targets(targets={targets!r}): pass 'all-linear' or a list of module names such as "
            f"[{targets!r}] (lora.targets in the config, e.g. --set 'lora.targets=[q_proj, v_proj]')"
        )
    unknown = [t for t in targets if t not in available]
    if unknown:
        raise ModelError(
            f"lora.targets: {', '.join(unknown)} match no linear module in this model; "
            f"its linear modules are: {', '.join(available)} (or use all-linear)"
        )
    return list(targets)


def top_layers_problem(top_layers: int | None, n_layers: int) -> str | None:
    """Why `lora.top_layers` does not fit a base of `n_layers` decoder layers, or None; training
    (adapted_layers) and `loraforge plan` refuse with this one message."""
    if top_layers is not None and top_layers > n_layers:
        return f"lora.top_layers={top_layers}: the base has only {n_layers} decoder layers"
    return None


def adapted_layers(spec: LoraSpec, n_layers: int) -> list[int] | None:
    """Indices of the decoder layers that get adapters: the last `top_layers`, or None for all."""
    if spec.top_layers is None:
        return None
    problem = top_layers_problem(spec.top_layers, n_layers)
    if problem:
        raise ModelError(problem)
    return list(range(n_layers - spec.top_layers, n_layers))


def build_lora_config(spec: LoraSpec, target_modules: list[str], n_layers: int | None = None) -> LoraConfig:
    """A PEFT LoraConfig for the variant. LoRA+ differs only in its optimizer; QLoRA in the base.
    `n_layers` (the base's decoder layers) is needed when `spec.top_layers` is set."""
    init: bool | str = True
    if spec.variant == "pissa":
        init = "pissa_niter_4"  # fast randomized SVD: seconds instead of minutes on large bases
    layers = None
    if spec.top_layers is not None:
        if n_layers is None:
            raise ModelError("lora.top_layers needs the base's layer count")
        layers = adapted_layers(spec, n_layers)  # refuses more layers than the base has
    return LoraConfig(
        layers_to_transform=layers,  # PEFT matches the first numbered path segment (model.layers.<i>.)
        r=spec.r,
        lora_alpha=spec.alpha,  # type: ignore[arg-type]  # PEFT annotates int, computes alpha/r in float
        lora_dropout=spec.dropout,
        target_modules=target_modules,
        bias="none",
        task_type="CAUSAL_LM",
        use_dora=spec.variant == "dora",
        use_rslora=spec.variant == "rslora",
        init_lora_weights=init,  # type: ignore[arg-type]
    )


def attach_lora(model: nn.Module, spec: LoraSpec) -> PeftModel:
    """Freeze the base and wrap it with a trainable LoRA adapter (adapter weights in fp32)."""
    targets = resolve_targets(model, spec.targets)
    config = build_lora_config(spec, targets, getattr(getattr(model, "config", None), "num_hidden_layers", None))
    peft_model = get_peft_model(model, config, autocast_adapter_dtype=True)  # type: ignore[arg-type]
    for name, param in peft_model.named_parameters():
        if "lora_" in name and param.dtype != torch.float32:
            param.data = param.data.float()
    return peft_model
