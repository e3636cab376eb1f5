"""The eval section of the config: the gate, its probes, its prompting baseline and its judge."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from loraforge import recipe
from loraforge.config_section import Section, why

Probe = Literal["safety", "general"]
ALL_PROBES: tuple[Probe, ...] = ("safety", "general")
Baseline = Literal["few_shot"]
ALL_BASELINES: tuple[Baseline, ...] = ("few_shot",)


class FewShotSpec(Section):
    """eval.few_shot: the prompting baseline, the base answering with training examples in its prompt."""

    k: int = Field(
        default=recipe.DEFAULT_FEW_SHOT_K,
        ge=1,
        description=why("eval.few_shot.k", "training examples placed before each golden prompt, as earlier turns"),
    )
    select: Literal["nearest", "random"] = Field(
        default="nearest",
        description="which examples: nearest, the k training rows whose last user turn shares the most words "
        "with the golden prompt's (TF-IDF cosine, ties in file order); random, k rows drawn with train.seed",
    )
    max_prompt_tokens: int = Field(
        default=recipe.DEFAULT_FEW_SHOT_MAX_PROMPT_TOKENS,
        gt=0,
        description=why(
            "eval.few_shot.max_prompt_tokens",
            "longest few-shot prompt; the farthest examples are dropped until the prompt and its answer budget "
            "fit this and the base's context",
        ),
    )


class JudgeSpec(Section):
    """eval.judge: the OpenAI-compatible endpoint that scores `judge` checks (docs/eval-gate.md#llm-judge)."""

    base_url: str | None = Field(
        default=None,
        description="the endpoint's OpenAI base URL, ending in /v1 (`loraforge serve`, vLLM or a hosted API); "
        "unset: no judge, and a golden row with a judge check is an error",
    )
    model: str | None = Field(default=None, description="the model name the endpoint serves the judge under")
    api_key_env: str | None = Field(
        default=None,
        description="environment variable holding the endpoint's API key (a key never goes in a config file); "
        "unset: no key is sent, for a local server without one",
    )
    min_agreement: float = Field(
        default=recipe.DEFAULT_JUDGE_MIN_AGREEMENT,
        ge=-1,
        le=1,
        description=why(
            "eval.judge.min_agreement",
            "Cohen's kappa with human labels (`loraforge eval calibrate-judge`) a judge needs before its slices "
            "can block or pass the adapter; below it, or uncalibrated, they are reported as advisory",
        ),
    )
    calibration: Path | None = Field(
        default=None,
        description="where `loraforge eval calibrate-judge` writes the judge's agreement and the gate reads it; "
        "unset: LORAFORGE_HOME/judge-calibration/, one file per base_url and model",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="the judge's replies, one file per sha256 of what was asked (endpoint, model, prompt, "
        "answer, scale), so an unchanged answer is never judged twice; unset: LORAFORGE_HOME/judge-cache",
    )
    max_tokens: int = Field(
        default=recipe.DEFAULT_JUDGE_MAX_TOKENS,
        gt=0,
        description=why("eval.judge.max_tokens", "the longest reply the judge may write"),
    )
    concurrency: int = Field(default=4, gt=0, description="judge requests in flight at once")
    timeout_s: float = Field(default=120.0, gt=0, description="seconds one judge request may take")

    @model_validator(mode="after")
    def _model_with_url(self) -> JudgeSpec:
        if self.base_url is not None and not self.model:
            raise ValueError("base_url is set but model is not: name the model the endpoint serves the judge under")
        return self


class EvalSpec(Section):
    gate: bool = Field(default=True, description="run the gate after training; a blocked adapter is not shipped")
    max_new_tokens: int = Field(
        default=recipe.DEFAULT_MAX_NEW_TOKENS,
        gt=0,
        description=why("eval.max_new_tokens", "greedy generation length cap"),
    )
    batch_size: int = Field(
        default=recipe.DEFAULT_EVAL_BATCH, gt=0, description=why("eval.batch_size", "prompts generated together")
    )
    give_up_after: int | None = Field(
        default=recipe.DEFAULT_GIVE_UP_AFTER,
        gt=0,
        description="end an answer once it can no longer pass its checks (not JSON where JSON is due, off an "
        "exact reference, a refusal where none may be, no refusal in a refusal's opening), after at least this "
        "many new tokens so reports show how it began; scores are the same; null: every answer runs to "
        "max_new_tokens or its end",
    )
    merge: bool = Field(
        default=True,
        description="fold each adapter into the base weights while it answers (unmerged after): the same "
        "answers, with no LoRA matmuls per layer; fp32 bases only (bf16 and 4-bit would round the update away)",
    )
    tolerance: int = Field(
        default=0, ge=0, description="lost rows forgiven per slice before the paired test and the 1-in-10 cap"
    )
    min_pass_rate: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, description="slice -> absolute pass rate floor the adapter must reach, 0..1 (0.9 is 90%)"
    )
    probes: list[Probe] = Field(
        default_factory=lambda: list(ALL_PROBES), description="built-in probe slices run beside the golden set"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="base dtype while gating; auto: what train.precision resolves to (bf16 where the GPU/CPU has "
        "fast bf16, else fp32), so train.precision=fp32 gates in fp32 too",
    )
    cache_base: bool = Field(
        default=True,
        description="reuse the base's answers from an earlier gate on the same base, cases, batch size, dtype and "
        "library versions (LORAFORGE_HOME/gate-base); the base half of the gate then costs nothing",
    )
    baselines: list[Baseline] = Field(
        default_factory=lambda: list(ALL_BASELINES),
        description="what else answers the golden set beside the base: few_shot, the base prompted with "
        "eval.few_shot.k training rows (sft runs with data.train; reported, never blocking); [] turns it off",
    )
    few_shot: FewShotSpec = Field(default_factory=FewShotSpec)
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
