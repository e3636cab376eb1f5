"""`loraforge export --for vllm`: check an adapter against what vLLM's LoRA loader refuses, write a
clean adapter directory and the exact `vllm serve` line; with vLLM installed (make setup-vllm), load
the adapter in vLLM and compare its greedy tokens with loraforge's own on the golden prompts.

The refusals mirror vLLM 0.32's loader (vllm/lora/peft_helper.py `validate_legal`, and the expected
target modules in vllm/lora/worker_manager.py): DoRA, modules_to_save, bias terms, PEFT features it
does not implement, a rank above max_lora_rank, and modules it has no LoRA layer for.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open

from loraforge.errors import ModelError
from loraforge.files import atomic_dir, write_json_atomic
from loraforge.models import MANIFEST_NAME, resolve_base
from loraforge.ship.adapter_source import AdapterSource, read_adapter_source
from loraforge.ship.vllm_run import VllmCheck, run_vllm_check

# vLLM's LoRAConfig.max_lora_rank accepts only these (vllm/config/lora.py MaxLoRARanks).
VLLM_MAX_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# LoRA target modules vLLM has layers for, per architecture: every linear layer of its model
# (q/k/v packed as qkv_proj, gate/up as gate_up_proj, unpacked by packed_modules_mapping) and the
# embedding modules. Read from vllm/model_executor/models/{llama,qwen2,mistral}.py in 0.32.
_LLAMA_STYLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head")
VLLM_LORA_MODULES: dict[str, tuple[str, ...]] = {
    "LlamaForCausalLM": _LLAMA_STYLE,
    "MistralForCausalLM": _LLAMA_STYLE,
    "Qwen2ForCausalLM": _LLAMA_STYLE,
}
# Public Hub ids of the aliases, for serving from the Hub instead of the converted directory.
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# vLLM accepts these init_lora_weights: they only set the initial adapter weights (peft_helper.py)
VLLM_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
EXPORT_RECORD_NAME = "loraforge-export.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


class ExportRefused(ModelError):
    """vLLM would refuse to load this adapter; the message lists every reason and its fix."""


@dataclass
class ExportReport:
    adapter_dir: str
    out_dir: str
    name: str
    base_spec: str
    base_dir: str  # the HF directory vLLM serves: the exact base the adapter was trained on
    architecture: str
    rank: int
    max_lora_rank: int
    target_modules: list[str]
    serve_command: str
    notes: list[str] = field(default_factory=list)
    vllm_check: VllmCheck | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read the PEFT config ({exc}); copy the adapter again") from exc
    if not isinstance(config, dict):
        raise ModelError(f"{path}: must be a JSON object; copy the adapter again")
    return config


def adapter_module_names(adapter_dir: Path) -> list[str]:
    """Short names of the modules the adapter's weights adapt, read from the safetensors keys
    (what vLLM checks), e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight -> q_proj."""
    names: set[str] = set()
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
            if ".lora_" in key:
                names.add(key.split(".lora_", 1)[0].rsplit(".", 1)[-1])
    return sorted(names)


def adapter_rank(config: dict[str, Any]) -> int:
    pattern = config.get("rank_pattern") or {}
    return max([int(config.get("r") or 0), *(int(v) for v in pattern.values())])


def feature_problems(config: dict[str, Any], adapter_dir: Path) -> list[str]:
    """What vLLM refuses in adapter_config.json, each with its fix."""
    problems = []
    merge = f"or merge it and serve the merged model: loraforge merge {adapter_dir} MERGED_DIR"
    if config.get("use_dora"):
        problems.append(f"vLLM does not load DoRA adapters (use_dora=true); retrain with lora.variant=lora, {merge}")
    if config.get("modules_to_save"):
        problems.append(
            f"vLLM does not load modules_to_save {config['modules_to_save']} (full copies of those layers) on a "
            f"causal LM; retrain without them, {merge}"
        )
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        problems.append(
            f"vLLM does not load LoRA bias terms (bias={config.get('bias')!r}); retrain with bias='none', {merge}"
        )
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in VLLM_INITS:
        problems.append(
            f"init_lora_weights={init!r}: the adapter needs a base that PEFT modifies on load (an unconverted "
            "PiSSA/OLoRA/LoftQ adapter), which vLLM does not do; export the converted adapter OUTPUT/adapter "
            "that loraforge train writes"
        )
    for key, what in (
        ("alora_invocation_tokens", "Activated LoRA"),
        ("layer_replication", "layer_replication"),
        ("use_bdlora", "block-diagonal LoRA"),
        ("use_qalora", "QALoRA"),
    ):
        if config.get(key):
            problems.append(f"vLLM does not load {what} adapters ({key}); retrain without it, {merge}")
    return problems


def pick_max_lora_rank(rank: int, max_lora_rank: int | None) -> tuple[int, list[str]]:
    """The --max-lora-rank to serve with (smallest allowed value >= rank when not given) and problems."""
    allowed = ", ".join(str(v) for v in VLLM_MAX_LORA_RANKS)
    if max_lora_rank is not None and max_lora_rank not in VLLM_MAX_LORA_RANKS:
        return max_lora_rank, [f"max_lora_rank={max_lora_rank} (--max-lora-rank): vLLM accepts only {allowed}"]
    if max_lora_rank is not None and rank > max_lora_rank:
        return max_lora_rank, [
            f"adapter rank {rank} is above max_lora_rank={max_lora_rank} (--max-lora-rank); pass one of {allowed} "
            f"that is at least {rank}"
        ]
    if max_lora_rank is not None:
        return max_lora_rank, []
    fitting = [v for v in VLLM_MAX_LORA_RANKS if v >= rank]
    if not fitting:
        return rank, [f"adapter rank {rank} is above vLLM's largest max_lora_rank 512; retrain with lora.r <= 512"]
    return fitting[0], []


def module_problems(architecture: str, modules: Sequence[str]) -> tuple[list[str], list[str]]:
    """(problems, notes) for the adapted modules against what vLLM has LoRA layers for."""
    supported = VLLM_LORA_MODULES.get(architecture)
    if supported is None:
        known = ", ".join(sorted(VLLM_LORA_MODULES))
        return [], [f"target modules not checked here: {architecture} is not among {known}; vLLM checks them at load"]
    unsupported = [m for m in modules if m not in supported]
    if not unsupported:
        return [], []
    return [
        f"vLLM has no LoRA layer for {', '.join(unsupported)} on {architecture} (it has: {', '.join(supported)}); "
        "retrain with lora.targets among those"
    ], []


def base_architecture(base_dir: Path) -> str:
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    architectures = config.get("architectures") or ["unknown"]
    return str(architectures[0])


def serve_command(base_dir: Path, name: str, out_dir: Path, max_lora_rank: int, template: bool) -> str:
    line = f"vllm serve {base_dir} --enable-lora --lora-modules {name}={out_dir} --max-lora-rank {max_lora_rank}"
    return f"{line} --chat-template {out_dir / CHAT_TEMPLATE_FILE}" if template else line


def export_for_vllm(
    adapter_dir: Path,
    out_dir: Path,
    max_lora_rank: int | None = None,
    *,
    name: str | None = None,
    base: str | None = None,
    check_with_vllm: bool = True,
) -> ExportReport:
    """Refuse (ExportRefused, every reason at once, nothing written) what vLLM would not load; else
    write `out_dir` (adapter_config.json, adapter_model.safetensors, the manifest, the training
    chat template) and return the report with the exact `vllm serve` line. With vLLM installed and
    `check_with_vllm`, also compare vLLM's greedy tokens with loraforge's (report.vllm_check)."""
    source = read_adapter_source(adapter_dir, base)
    config = read_adapter_config(adapter_dir)
    rank = adapter_rank(config)
    problems = feature_problems(config, adapter_dir)
    served_rank, rank_problems = pick_max_lora_rank(rank, max_lora_rank)
    base_dir = resolve_base(source.base_spec).resolve()
    architecture = base_architecture(base_dir)
    modules = adapter_module_names(adapter_dir)
    unsupported, notes = module_problems(architecture, modules)
    problems += rank_problems + unsupported
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise ExportRefused(f"{adapter_dir}: vLLM would not load this adapter; nothing written to {out_dir}:\n{listed}")
    notes += _serving_notes(source, base_dir)
    out = out_dir.resolve()
    served_name = name or out.name
    command = serve_command(base_dir, served_name, out, served_rank, source.chat_template is not None)
    report = ExportReport(
        str(adapter_dir), str(out), served_name, source.base_spec, str(base_dir), architecture, rank, served_rank,
        modules, command, notes,
    )  # fmt: skip
    _write_export(source, out, report)
    if check_with_vllm:
        report.vllm_check = run_vllm_check(source, out, base_dir, served_rank)
        write_json_atomic(out / EXPORT_RECORD_NAME, report.to_dict())
    return report


def _serving_notes(source: AdapterSource, base_dir: Path) -> list[str]:
    notes = []
    if source.base_spec in HUB_IDS:
        notes.append(
            f"the serve line names the converted base {base_dir} (the weights it was trained on, dequantized from "
            f"the embedded GGUF); `vllm serve {HUB_IDS[source.base_spec]}` from the Hub has the original weights, "
            "which differ slightly"
        )
    if source.variant == "qlora":
        notes.append("QLoRA: vLLM serves the adapter on the dense base, not the 4-bit one it was trained against")
    return notes


def _write_export(source: AdapterSource, out_dir: Path, report: ExportReport) -> None:
    with atomic_dir(out_dir) as tmp:
        for file in ("adapter_config.json", "adapter_model.safetensors", MANIFEST_NAME):
            if (source.adapter_dir / file).is_file():
                shutil.copy2(source.adapter_dir / file, tmp / file)
        if source.chat_template is not None:
            (tmp / CHAT_TEMPLATE_FILE).write_text(source.chat_template, encoding="utf-8")
        write_json_atomic(tmp / EXPORT_RECORD_NAME, report.to_dict())
