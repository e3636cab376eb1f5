"""The method wizard: at most five questions, one method, its reasons and the config keys to set.

`advise(answers)` is a pure function of the answers, so every branch is a row in a test table;
`questions_for(gap)` lists what the CLI asks, in order, for a given first answer.

The rule, in order: a knowledge gap is retrieval's job (RAG); a prompt that nearly works wants
prompt optimisation; otherwise fine-tune a LoRA adapter with the objective the supervision
allows (a verifier: GRPO; preference pairs: DPO; demonstrations: SFT), as DoRA at rank 16 when
the base fits the GPU in bf16, with FSDP when it does not (QLoRA once it is verified on a GPU);
small data gets a lower rank, more dropout and fewer epochs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Gap = Literal["knowledge", "prompt", "behaviour", "format"]
Signal = Literal["verifier", "preferences", "demonstrations"]
GAPS: tuple[Gap, ...] = ("knowledge", "prompt", "behaviour", "format")
SIGNALS: tuple[Signal, ...] = ("verifier", "preferences", "demonstrations")

SMALL_DATA_EXAMPLES = 1_000  # below this a rank-16 adapter memorises rows within an epoch or two
LARGE_DATA_EXAMPLES = 100_000  # above this rank 16 saturates; rank 32 keeps learning
BF16_GB_PER_B = 2.0  # bf16 weights: 2 bytes a parameter
NF4_GB_PER_B = 0.56  # NF4: 0.5 bytes a parameter + quantisation constants + bf16 embeddings (~12%)
TRAINING_HEADROOM = 1.6  # adapter, AdamW, checkpointed mb-1 activations, a 128k-vocab head (~3 GB), CUDA context
# load_base places a 4-bit base on the CUDA device, but no QLoRA run has been checked on a GPU yet
# (docs/plan.md): until one has, a base that fits only in 4 bits gets FSDP advice instead
QLORA_ON_GPU_VERIFIED = False
LOW_FORMAT_LR = 1e-4  # half the recipe's 2e-4: moves an instruct base to a new format without erasing its chat skills


@dataclass(frozen=True)
class Question:
    key: str
    text: str
    choices: tuple[str, ...] = ()  # empty: a free answer, parsed by the CLI


QUESTIONS: dict[str, Question] = {
    "gap": Question(
        "gap",
        "What does the base lack? knowledge (facts, documents), prompt (a careful prompt nearly works already), "
        "behaviour (a task skill, tone, policy) or format (a new output format)",
        GAPS,
    ),
    "instruct": Question("instruct", "Is the base instruction-tuned (a chat model)?", ("yes", "no")),
    "signal": Question(
        "signal",
        "What supervision do you have? verifier (code that scores an answer), preferences (chosen/rejected "
        "pairs) or demonstrations (good answers to imitate)",
        SIGNALS,
    ),
    "memory": Question("memory", "Base size in billions of parameters, and GPU memory in GB (e.g. '8 24')"),
    "examples": Question("examples", "How many training examples do you have?"),
}


def questions_for(gap: Gap) -> list[Question]:
    """The questions asked after `gap` (itself the first): none when the gap rules out training."""
    if gap in ("knowledge", "prompt"):
        return [QUESTIONS["gap"]]
    keys = (
        ["gap", "instruct", "signal", "memory", "examples"]
        if gap == "format"
        else ["gap", "signal", "memory", "examples"]
    )
    return [QUESTIONS[key] for key in keys]


@dataclass(frozen=True)
class Answers:
    gap: Gap
    signal: Signal = "demonstrations"
    model_b: float | None = None  # base size, billions of parameters
    vram_gb: float | None = None  # memory of one GPU
    examples: int | None = None
    instruct: bool = True


@dataclass(frozen=True)
class Advice:
    method: str
    reasons: list[str]
    config_keys: dict[str, Any] = field(default_factory=dict)
    fine_tune: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def advise(answers: Answers) -> Advice:
    """One method for these answers, with its reasons and the loraforge config keys to set."""
    if answers.gap == "knowledge":
        return Advice(
            "rag",
            [
                "the gap is knowledge: retrieval adds facts without training, cites them and updates when they "
                "change, while a fine-tune memorises a snapshot and guesses around what it missed",
                "fine-tune later only if the answers over retrieved text need a new format or tone",
            ],
            fine_tune=False,
        )
    if answers.gap == "prompt":
        return Advice(
            "prompt-optimisation",
            [
                "a careful prompt already gets close: optimise the prompt and its few-shot examples against the "
                "golden set (cheap, reversible) and fine-tune only if a measured gap remains",
                "measure that gap first: `loraforge baseline CONFIG` scores the base with and without "
                "eval.few_shot.k training examples on the golden set, per slice",
            ],
            fine_tune=False,
        )
    objective, reasons = _objective(answers.signal)
    variant, memory_reason = _variant(answers)
    keys: dict[str, Any] = {"lora.variant": variant}
    reasons.append(memory_reason)
    size_keys, size_reason = data_size_advice(answers.examples)
    keys.update(size_keys)
    if size_reason is not None:
        reasons.append(size_reason)
    if answers.gap == "format":
        reasons.append(_format_reason(answers.instruct, keys))
    suffix = "lora-fsdp" if variant == "lora" and "FSDP" in memory_reason else variant
    return Advice(f"{objective}-{suffix}", reasons, keys)


def _objective(signal: Signal) -> tuple[str, list[str]]:
    if signal == "verifier":
        return "grpo", [
            "a verifier scores sampled answers, so GRPO optimises the score directly instead of imitating "
            "fixed answers; loraforge trains the SFT warm start, then run TRL's GRPOTrainer with this LoRA config"
        ]
    if signal == "preferences":
        return "dpo", [
            "preference pairs say which answer is better, which DPO learns directly on a LoRA adapter (the frozen "
            "base is the reference model, so no second copy); run TRL's DPOTrainer with this LoRA config"
        ]
    return "sft", ["demonstrations to imitate: supervised fine-tuning of a LoRA adapter (`loraforge train`)"]


def _variant(answers: Answers) -> tuple[str, str]:
    if answers.model_b is None or answers.vram_gb is None:
        return "dora", "no size given: DoRA at rank 16 (check the fit with `loraforge plan CONFIG`)"
    bf16_gb = answers.model_b * BF16_GB_PER_B * TRAINING_HEADROOM
    nf4_gb = answers.model_b * NF4_GB_PER_B * TRAINING_HEADROOM
    if bf16_gb <= answers.vram_gb:
        return "dora", (
            f"a {answers.model_b:g}B base needs ~{bf16_gb:.0f} GB in bf16, within {answers.vram_gb:g} GB: "
            "DoRA at rank 16 (magnitude + direction; closer to full fine-tuning than plain LoRA at the same rank)"
        )
    if nf4_gb <= answers.vram_gb and QLORA_ON_GPU_VERIFIED:
        return "qlora", (
            f"a {answers.model_b:g}B base needs ~{bf16_gb:.0f} GB in bf16 but ~{nf4_gb:.0f} GB as 4-bit NF4: "
            f"QLoRA fits {answers.vram_gb:g} GB"
        )
    if nf4_gb <= answers.vram_gb:
        gpus = fsdp_gpus(bf16_gb, answers.model_b, answers.vram_gb)
        return "lora", (
            f"a {answers.model_b:g}B base needs ~{bf16_gb:.0f} GB in bf16, more than {answers.vram_gb:g} GB; "
            f"4-bit NF4 (~{nf4_gb:.0f} GB) would fit, but QLoRA is not yet verified on a GPU: LoRA with FSDP "
            f"sharding the bf16 base over ~{gpus} GPUs (size it with `loraforge plan --gpu`)"
        )
    gpus = fsdp_gpus(nf4_gb, answers.model_b, answers.vram_gb)
    return "lora", (
        f"a {answers.model_b:g}B base needs ~{nf4_gb:.0f} GB even in 4 bits, more than {answers.vram_gb:g} GB: "
        f"LoRA with FSDP sharding the bf16 base over ~{gpus} GPUs (size it with `loraforge plan --gpu`)"
    )


def fsdp_gpus(sharded_gb: float, model_b: float, vram_gb: float) -> int:
    """The power of two (at least 2) of GPUs over which `sharded_gb` plus ~0.1 GB a billion
    parameters of unsharded activations fits `vram_gb` each."""
    gpus = 2
    while sharded_gb / gpus + model_b * 0.1 > vram_gb and gpus < 1024:
        gpus *= 2
    return gpus


def data_size_advice(examples: int | None, r: int | None = None) -> tuple[dict[str, Any], str | None]:
    """Rank, dropout and epochs for the data size (none when the recipe already suits it)."""
    if examples is None:
        return {}, None
    if examples < SMALL_DATA_EXAMPLES:
        keys = {"lora.r": 8, "lora.alpha": 16.0, "lora.dropout": 0.1, "train.epochs": 1.0}
        return keys, f"{examples:,} examples is small: rank 8, dropout 0.1 and one epoch keep it from memorising"
    if examples > LARGE_DATA_EXAMPLES and (r is None or r < 32):
        return {"lora.r": 32, "lora.alpha": 64.0}, f"{examples:,} examples: rank 32 keeps learning where 16 saturates"
    return {}, None


def _format_reason(instruct: bool, keys: dict[str, Any]) -> str:
    if instruct:
        keys["train.lr"] = LOW_FORMAT_LR
        return (
            "a new format on an instruction-tuned base fights its trained chat format: a low learning rate "
            f"({LOW_FORMAT_LR:g}) changes the format without erasing its skills (or start from the pretrained base)"
        )
    return "a new format on a pretrained base has no chat format to fight: the recipe's learning rate is fine"
