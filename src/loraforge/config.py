"""Typed run settings. Each default is the recipe, named, with the reason beside it.

The YAML written by `loraforge init`, `loraforge config check`, docs/config.md and `--help` are
all generated from the fields below (by `loraforge.config_text`), so the reasons live in exactly
one place.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from loraforge import recipe

# re-exported: the eval section lives in config_eval, every other module names it from here
from loraforge.config_eval import ALL_PROBES as ALL_PROBES
from loraforge.config_eval import EvalSpec as EvalSpec
from loraforge.config_eval import FewShotSpec as FewShotSpec
from loraforge.config_eval import JudgeSpec as JudgeSpec
from loraforge.config_eval import Probe as Probe
from loraforge.config_section import Section
from loraforge.config_section import why as _why
from loraforge.config_yaml import apply_overrides, read_yaml
from loraforge.errors import ConfigError


class DataSpec(Section):
    train: Path = Field(description="training jsonl: messages, prompt/completion, text, alpaca or sharegpt rows")
    golden: Path | None = Field(
        default=None, description="golden jsonl, frozen by hash before training; the eval gate scores it"
    )
    eval: Path | None = Field(
        default=None, description="held-out jsonl for eval loss; when absent, eval_fraction of train is held out"
    )
    replay: Literal["builtin"] | Path | None = Field(
        default=recipe.DEFAULT_REPLAY,
        description="rows mixed into every epoch to keep general skills: builtin (the base's own answers to "
        "151 bundled general and safety prompts, disjoint from the gate's probes), a jsonl file (see "
        "`loraforge distill`), or null for none; cleaned and leak-checked like train rows, never held out",
    )
    replay_ratio: float | None = Field(
        default=recipe.DEFAULT_REPLAY_RATIO,
        gt=0,
        lt=1,
        description=_why(
            "data.replay_ratio",
            "share of training rows drawn from data.replay (its rows repeated in a seeded order "
            "to reach it); null: each replay row once",
        ),
    )
    eval_fraction: float = Field(
        default=recipe.DEFAULT_EVAL_FRACTION,
        gt=0,
        lt=1,
        description=_why("data.eval_fraction", "share of train held out for eval loss (at least 1 row)"),
    )
    on_error: Literal["strict", "skip"] = Field(
        default="strict", description="strict stops on the first bad row set; skip drops bad rows and counts them"
    )
    template: Path | None = Field(
        default=None, description="Jinja chat template file, for a base whose tokenizer has none"
    )
    train_on: Literal["all", "last"] = Field(
        default="all", description="which assistant turns carry loss: all of them, or the last only"
    )
    max_seq_len: int | Literal["auto"] = Field(
        default="auto", description="auto: 95th percentile of token lengths, rounded up to 64, capped by context"
    )
    max_row_chars: int = Field(
        default=recipe.DEFAULT_MAX_ROW_CHARS,
        gt=0,
        description=_why("data.max_row_chars", "rows longer than this are rejected as data bugs"),
    )
    packing: bool = Field(default=True, description="pack rows into full sequences; rows never attend to each other")
    pack_len: int | Literal["auto"] = Field(
        default="auto",
        description="tokens per packed row, at least max_seq_len (auto: max_seq_len); longer rows hold more examples",
    )
    share_prefix: bool = Field(
        default=True,
        description="pack rows that begin with the same tokens (a system prompt) behind one copy of them; "
        "each row attends to that copy and itself only, so the loss is unchanged and the copy is computed once",
    )
    dedup: bool = Field(default=True, description="drop exact and near-duplicate rows (MinHash LSH)")
    near_dup_threshold: float = Field(
        default=recipe.DEFAULT_NEAR_DUP_THRESHOLD,
        gt=0,
        le=1,
        description=_why(
            "data.near_dup_threshold", "Jaccard similarity on word 5-grams that counts as a near duplicate"
        ),
    )
    leakage_check: bool = Field(
        default=True, description="remove train rows that duplicate golden rows, so the gate measures generalisation"
    )
    pii: Literal["redact", "report", "off"] = Field(
        default="redact",
        description="PII found by Presidio patterns (email, phone, card, IBAN, IP, US SSN); "
        "redact also drops rows whose answer repeats a redacted value (docs/data.md#pii)",
    )
    pii_ner_model: Path | None = Field(
        default=None, description="local spaCy model directory to also detect names (NER); none is downloaded"
    )

    @field_validator("max_seq_len", "pack_len")
    @classmethod
    def _positive_len(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 16:
            raise ValueError("must be 'auto' or an integer >= 16")
        return value


class LoraSpec(Section):
    r: int = Field(default=recipe.DEFAULT_R, gt=0, le=1024, description=_why("lora.r", "adapter rank"))
    alpha: float = Field(
        default=recipe.DEFAULT_ALPHA,
        gt=0,
        description=_why("lora.alpha", "scale numerator: updates are scaled by alpha/r"),
    )
    dropout: float = Field(
        default=recipe.DEFAULT_DROPOUT, ge=0, lt=1, description=_why("lora.dropout", "dropout on the adapter input")
    )
    targets: Literal["all-linear"] | list[str] = Field(
        default=recipe.DEFAULT_TARGETS,
        description=_why(
            "lora.targets", "all-linear (q, k, v, o, gate, up, down; never lm_head) or a list of module names"
        ),
    )
    variant: Literal["lora", "dora", "rslora", "pissa", "loraplus", "qlora"] = Field(
        default="lora", description="lora, dora, rslora (alpha/sqrt(r)), pissa init, loraplus, qlora (4-bit NF4 base)"
    )
    loraplus_lr_ratio: float = Field(
        default=recipe.DEFAULT_LORAPLUS_RATIO,
        ge=1,
        description=_why(
            "lora.loraplus_lr_ratio",
            "LoRA+: lr of B over lr of A; at least 1, as LoRA+ means B learns faster than A (below 1, slower)",
        ),
    )
    top_layers: int | None = Field(
        default=None,
        gt=0,
        description="adapt only the last N decoder layers; unset: all. Backward stops at the lowest adapted "
        "layer, so with N of L layers a step costs about (1 + N/L)/2 of adapting all of them",
    )

    @field_validator("targets")
    @classmethod
    def _non_empty_targets(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("needs at least one module name, or 'all-linear'")
        return value


class DpoSpec(Section):
    """train.method: dpo. The losses and their hyperparameters (loraforge.train.preference)."""

    loss: Literal["sigmoid", "simpo"] = Field(
        default="sigmoid",
        description="sigmoid: DPO (Rafailov et al. 2023), against the reference policy (where the run starts: "
        "the base with a fresh adapter, or train.init_adapter); simpo: SimPO (Meng et al. 2024), "
        "reference-free, on the answers' mean token log-probabilities",
    )
    beta: float | None = Field(
        default=None,
        gt=0,
        description="how far the policy may move: the loss's scale on the reward margin; unset: 0.1 for sigmoid "
        "(the DPO paper's), 2.0 for simpo (the SimPO paper's range is 2-2.5)",
    )
    simpo_gamma: float = Field(
        default=1.0,
        ge=0,
        description="simpo only: the target margin between chosen and rejected; 1.0 with beta 2.0 is the SimPO "
        "paper's gamma/beta ratio of 0.5",
    )

    @property
    def resolved_beta(self) -> float:
        return self.beta if self.beta is not None else (0.1 if self.loss == "sigmoid" else 2.0)


class StrengthSpec(Section):
    """After training: the largest scale of the update that keeps the base's knowledge (evaluate.strength)."""

    scales: list[float] = Field(
        default_factory=lambda: list(recipe.STRENGTH_SCALES),
        min_length=1,
        description=_why(
            "train.strength.scales",
            "scales of the trained update (W + s*B@A) tried after training, largest first, each in (0, 1], on "
            "the bundled selection probes (disjoint from the gate's); the first that loses at most "
            "train.strength.tolerance of them is baked into the saved adapter (manifest `strength`). [1.0]: off",
        ),
    )
    tolerance: int = Field(
        default=0,
        ge=0,
        description=_why(
            "train.strength.tolerance",
            "selection probes (of those the base answers right) a scale may lose and still be kept",
        ),
    )
    probes: Path | None = Field(
        default=None,
        description="your own selection set instead of the bundled one: golden-format jsonl rows with checks "
        "(knowledge the adapter must keep); none may share a question with data.golden or the gate's probes",
    )

    @field_validator("scales")
    @classmethod
    def _in_unit_interval(cls, value: list[float]) -> list[float]:
        if any(not 0.0 < s <= 1.0 for s in value):
            raise ValueError("each scale must be in (0, 1]; use [1.0] to keep the adapter as trained")
        return value


class TrainSpec(Section):
    method: Literal["sft", "dpo"] = Field(
        default="sft",
        description="sft: learn the answers in data.train; dpo: learn from preference pairs "
        '({"prompt", "chosen", "rejected"} rows, docs/training.md#preference-round), as train.dpo says, '
        "without LoRA dropout (a pair's log-probabilities and their reference must come from one function)",
    )
    epochs: float = Field(
        default=recipe.DEFAULT_EPOCHS, gt=0, le=100, description=_why("train.epochs", "passes over the training rows")
    )
    max_steps: int | None = Field(default=None, gt=0, description="optional cap on optimizer steps")
    lr: float = Field(default=recipe.DEFAULT_LR, gt=0, lt=1, description=_why("train.lr", "peak learning rate (AdamW)"))
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        default=recipe.DEFAULT_SCHEDULER, description=_why("train.scheduler", "learning-rate decay after warmup")
    )
    warmup_ratio: float = Field(
        default=recipe.DEFAULT_WARMUP_RATIO,
        ge=0,
        lt=1,
        description=_why("train.warmup_ratio", "share of steps spent warming up"),
    )
    weight_decay: float = Field(
        default=recipe.DEFAULT_WEIGHT_DECAY,
        ge=0,
        description=_why("train.weight_decay", "AdamW weight decay on adapter weights"),
    )
    micro_batch_size: int = Field(
        default=recipe.DEFAULT_MICRO_BATCH,
        gt=0,
        description=_why("train.micro_batch_size", "sequences per forward pass (fewer when auto steps need fewer)"),
    )
    grad_accum: int | Literal["auto"] = Field(
        default=recipe.DEFAULT_GRAD_ACCUM,
        description="micro-batches per optimizer step; auto: about 50 steps an epoch, 8 to 128 examples a step "
        "(packed rows count their examples), so a few hundred rows still get enough updates",
    )
    max_grad_norm: float = Field(
        default=recipe.DEFAULT_MAX_GRAD_NORM, gt=0, description=_why("train.max_grad_norm", "gradient clipping norm")
    )
    seed: int = Field(
        default=recipe.DEFAULT_SEED, ge=0, description=_why("train.seed", "seeds data split, order, init and dropout")
    )
    order: Literal["shuffle", "balanced"] = Field(
        default="shuffle",
        description="row order within an epoch; shuffle: a seeded random permutation; balanced: every prefix "
        "holds the token n-grams rows share (phrasings, answer labels, replay rows) in the data's proportions "
        "(herding), so a run shorter than an epoch sees an even slice of the data; ~1 s per 400 rows",
    )
    eval_every: float = Field(
        default=recipe.DEFAULT_EVAL_EVERY,
        gt=0,
        description=_why("train.eval_every", "eval loss every this many epochs"),
    )
    early_stopping_patience: int = Field(
        default=recipe.DEFAULT_EARLY_STOPPING_PATIENCE,
        ge=0,
        description=_why("train.early_stopping_patience", "evals without improvement before stopping; 0 = off"),
    )
    save_every: float | None = Field(
        default=None, gt=0, description="checkpoint every this many epochs; default: at every eval"
    )
    keep_checkpoints: int = Field(
        default=recipe.DEFAULT_KEEP_CHECKPOINTS,
        ge=1,
        description=_why("train.keep_checkpoints", "newest checkpoints kept for resume (the best is always kept)"),
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto: bf16 base where the GPU/CPU has fast bf16 (adapters stay fp32), else fp32"
    )
    gradient_checkpointing: bool = Field(
        default=False, description="recompute activations in backward: less memory, ~30% slower"
    )
    replay_kl: float | None = Field(
        default=None,
        gt=0,
        description="weight of a KL anchor on data.replay rows: each of their answer tokens also adds "
        "replay_kl * KL(p_base, p_adapter) over the full vocabulary, so the adapter keeps the base's whole "
        "next-token distribution there, not only its greedy answer; costs one extra no-grad base forward "
        "over the rows holding replay examples; unset: off",
    )
    dpo: DpoSpec = Field(default_factory=DpoSpec)
    strength: StrengthSpec = Field(default_factory=StrengthSpec)
    init_adapter: Path | None = Field(
        default=None,
        description="dpo: start from this adapter (an SFT run's OUTPUT/adapter) instead of a fresh one; it is "
        "also the reference policy, and its rank, alpha and targets replace lora:'s; its manifest must name "
        "the base and chat template of this run",
    )
    log_every: int = Field(default=1, gt=0, description="optimizer steps between train-loss log lines")
    log_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list, description="extra metric writers besides metrics.jsonl"
    )

    @field_validator("grad_accum")
    @classmethod
    def _positive_accum(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be 'auto' or an integer >= 1")
        return value


class ShipSpec(Section):
    key: Path | None = Field(
        default=None,
        description="private key (PEM, from `loraforge keygen`) that signs the adapter after a passing gate; "
        "unset: the adapter stays unsigned and the run says so (docs/ship-signing.md)",
    )
    password_env: str | None = Field(
        default=None,
        description="environment variable holding ship.key's password; unset: the key is not encrypted "
        "(a password never goes in a config file)",
    )


class Config(Section):
    base: str = Field(
        default=recipe.DEFAULT_BASE, description=_why("base", "alias, Hugging Face model directory, or .gguf file")
    )
    output: Path = Field(default=Path("runs/default"), description="run directory for every artifact")
    data: DataSpec
    lora: LoraSpec = Field(default_factory=LoraSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    ship: ShipSpec = Field(default_factory=ShipSpec)


# --- loading ----------------------------------------------------------------------------------


def _field_names_at(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return list(model.model_fields)


# Names users bring from PEFT, TRL and Axolotl configs, mapped to ours for "did you mean".
KNOWN_ALIASES = {
    "rank": "r",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "target_modules": "targets",
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "num_train_epochs": "epochs",
    "batch_size": "micro_batch_size",
    "per_device_train_batch_size": "micro_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "lr_scheduler_type": "scheduler",
    "sequence_len": "max_seq_len",
    "max_length": "max_seq_len",
    "model": "base",
    "base_model": "base",
    "output_dir": "output",
}


def _suggest(key: str, siblings: list[str]) -> str | None:
    alias = KNOWN_ALIASES.get(key)
    if alias in siblings:
        return alias
    guess = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
    return guess[0] if guess else None


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        siblings = _field_names_at(loc[:-1])
        guess = _suggest(str(loc[-1]), siblings)
        hint = f"; did you mean '{'.'.join([*map(str, loc[:-1]), guess])}'?" if guess else ""
        return f"{path}: unknown key{hint} (known: {', '.join(siblings)})"
    if err["type"] == "missing":
        return f"{path}: required, add it"
    return f"{path}: {err['msg']} (got {err.get('input')!r})"


def validate_config(raw: dict[str, Any], source: str = "config", check_files: bool = True) -> Config:
    """Validate a raw mapping; raise one ConfigError that lists every problem."""
    problems: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_describe(e) for e in exc.errors())  # type: ignore[arg-type]
    if check_files:
        problems.extend(_missing_files(raw))
    problems.extend(_cross_section_problems(raw))
    if problems or config is None:
        raise ConfigError(problems, source)
    return config


def _cross_section_problems(raw: dict[str, Any]) -> list[str]:
    """Settings that are valid alone but not together; read from the raw mapping, like _missing_files,
    so they are reported beside every other problem."""
    data, lora, train = (_raw_section(raw, name) for name in ("data", "lora", "train"))
    problems = _preference_problems(lora, train) if train.get("method") == "dpo" else []
    if train.get("method") != "dpo" and train.get("init_adapter") is not None:
        problems.append("train.init_adapter: only train.method=dpo starts from an adapter yet; set it or remove this")
    if train.get("replay_kl") is None:
        return problems
    if "replay" in data and data["replay"] is None:
        problems.append(
            "train.replay_kl: anchors replay rows to the base, but data.replay is not set; "
            "set data.replay (rows from `loraforge distill`) or remove train.replay_kl"
        )
    if lora.get("variant") == "pissa":
        problems.append(
            "train.replay_kl: lora.variant=pissa moves the adapter's starting weights out of the base, so the "
            "base with its adapter switched off is not the base the KL must anchor to; use another "
            "lora.variant or remove train.replay_kl"
        )
    return problems


def _preference_problems(lora: dict[str, Any], train: dict[str, Any]) -> list[str]:
    """What train.method: dpo does not support (yet), each with its fix."""
    problems = []
    if train.get("replay_kl") is not None:
        problems.append(
            "train.replay_kl: anchors SFT replay rows, and train.method=dpo trains on pairs only: remove it"
        )
    if train.get("order") == "balanced":
        problems.append(
            "train.order: balanced orders SFT rows by their tokens; train.method=dpo shuffles pairs: remove it"
        )
    if lora.get("variant") == "pissa":
        problems.append(
            "lora.variant: pissa moves the base's weights into the adapter, and train.method=dpo does not export "
            "that back to plain LoRA yet; use lora, dora, rslora, loraplus or qlora"
        )
    return problems


def _raw_section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    section = raw.get(name)
    return section if isinstance(section, dict) else {}


def _missing_files(raw: dict[str, Any]) -> list[str]:
    """Checked on the raw mapping so a missing file is reported beside every other problem."""
    data = _raw_section(raw, "data")
    problems = []
    for key in ("train", "golden", "eval", "replay", "template"):
        path = data.get(key)
        if isinstance(path, str | Path) and path != "builtin" and not Path(path).is_file():
            problems.append(f"data.{key}: file not found: {path} (paths are relative to where you run loraforge)")
    init_adapter = _raw_section(raw, "train").get("init_adapter")
    if isinstance(init_adapter, str | Path) and not (Path(init_adapter) / "adapter_config.json").is_file():
        problems.append(
            f"train.init_adapter: no adapter_config.json in {init_adapter}; name a PEFT adapter directory "
            "(an SFT run's OUTPUT/adapter)"
        )
    ship_key = _raw_section(raw, "ship").get("key")
    if isinstance(ship_key, str | Path) and not Path(ship_key).is_file():
        problems.append(
            f"ship.key: file not found: {ship_key}; make a key pair with `loraforge keygen DIR` or unset ship.key"
        )
    return problems


def load_config(path: Path, overrides: list[str] | None = None, check_files: bool = True) -> Config:
    """Read, override and validate a YAML config; every problem is reported at once."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate_config(raw, source=str(path), check_files=check_files)
