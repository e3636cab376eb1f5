"""`loraforge merge`: fold an adapter into its base and write a plain transformers model directory,
after checking on the golden prompts that the merged model answers as the unmerged adapter does.

The merge itself is PEFT's `merge_and_unload`, which folds each variant by its own rule: W + s*B@A
for LoRA, rsLoRA, LoRA+ and converted PiSSA; DoRA's m * (W + s*B@A) / ||W + s*B@A|| (its magnitude
rule). It always runs in fp32 and the merged weights are cast to the requested dtype once, so a
bf16 or fp16 merge rounds each weight one time, not twice. A QLoRA adapter merges into the
dequantized 4-bit base (the weights it was trained against, in fp32), never into the 4-bit weights.

The reference is the unmerged adapter on the base in the requested dtype (for QLoRA: the 4-bit
base computing in that dtype), so the figures measure what merging changes, not what the dtype
costs by itself. docs/ship-merge.md has the measured figures behind the tolerances.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from loraforge.data.types import Message
from loraforge.errors import ModelError
from loraforge.files import atomic_dir, sha256_text, write_json_atomic
from loraforge.models import LoadedBase, load_adapter, load_base
from loraforge.models.generate import render_prompt
from loraforge.ship.adapter_source import AdapterSource, adapter_hashes, check_prompts, read_adapter_source
from loraforge.train.precision import qlora_quantization_config

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Largest max |logit difference| between merged and unmerged allowed per dtype (docs/ship-merge.md
# has the figures). fp32: merging only reorders fp32 sums (x@W + s*(x@A)@B vs x@(W + s*B@A)); on
# the tiny test Llama that moved logits by ~3e-7 for LoRA and DoRA, 1e-6 for QLoRA, on SmolLM2-135M
# by 9.8e-5 (r=16), while an adapter moves them by tenths: 1e-3 leaves margin and catches a wrong fold.
# bf16/fp16: the unmerged reference adds an fp32 LoRA term to a half-precision base matmul while
# the merged weight W + s*B@A is rounded to 8 (bf16) or 11 (fp16) mantissa bits: each matmul output
# moves by about 2^-8 (2^-11) of its size, and a base's logits run to ~20-30, so a few tenths
# (bf16) or a few hundredths (fp16) is rounding; the tiny Llama measured 6e-3-8e-3 (bf16) and
# 7e-4-9e-3 (fp16). Greedy answers must match in every dtype.
FP32_LOGIT_TOLERANCE = 1e-3
BF16_LOGIT_TOLERANCE = 1.0
FP16_LOGIT_TOLERANCE = 0.25
LOGIT_TOLERANCES: dict[str, float] = {
    "fp32": FP32_LOGIT_TOLERANCE,
    "bf16": BF16_LOGIT_TOLERANCE,
    "fp16": FP16_LOGIT_TOLERANCE,
}
DEFAULT_MAX_PROMPTS = 16  # the golden set's first prompts: enough to see a wrong fold, cheap on a CPU
DEFAULT_GREEDY_TOKENS = 32  # greedy tokens compared per prompt, both ways
MERGE_RECORD_NAME = "loraforge-merge.json"
MERGE_RECORD_FORMAT = 1


class MergeRefused(ModelError):
    """The merged model does not match the unmerged adapter within the dtype's tolerance."""


@dataclass(frozen=True)
class Comparison:
    max_abs_logit_diff: float  # over every position of prompt + reference greedy answer, all prompts
    greedy_equal: bool
    first_difference: str | None  # "prompt i, token j: 'unmerged' vs 'merged'" where greedy differs
    tokens_compared: int


@dataclass(frozen=True)
class MergeReport:
    adapter_dir: str
    out_dir: str
    dtype: str
    variant: str
    base_spec: str
    base_fingerprint: str
    prompts_source: str
    n_prompts: int
    greedy_tokens: int
    max_abs_logit_diff: float
    tolerance: float
    greedy_equal: bool
    first_difference: str | None
    seconds: float

    @property
    def passed(self) -> bool:
        return self.greedy_equal and self.max_abs_logit_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def torch_dtype_of(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ModelError(f"dtype={dtype!r} (--dtype): use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def merge_adapter(
    adapter_dir: Path,
    out_dir: Path,
    dtype: str = "fp32",
    prompts: list[list[Message]] | None = None,
    *,
    base: str | None = None,
    max_prompts: int = DEFAULT_MAX_PROMPTS,
    greedy_tokens: int = DEFAULT_GREEDY_TOKENS,
) -> MergeReport:
    """Merge the adapter in `adapter_dir` into its base and write a full model directory to
    `out_dir` (safetensors, config, tokenizer with the training chat template, loraforge-merge.json).
    Refuses with MergeRefused, writing nothing, when the merged model's logits differ from the
    unmerged adapter's by more than LOGIT_TOLERANCES[dtype] or its greedy answers differ."""
    started = time.perf_counter()
    torch_dtype = torch_dtype_of(dtype)
    if out_dir.resolve() == adapter_dir.resolve():
        raise ModelError(f"out_dir={out_dir} (OUT_DIR) is the adapter directory; name a new directory")
    source = read_adapter_source(adapter_dir, base)
    conversations, prompts_source = check_prompts(source, prompts, max_prompts)
    reference = load_unmerged(source, torch_dtype)
    merged = _merge_in_fp32(source).to(torch_dtype)  # type: ignore[arg-type]
    merged.eval()
    template = source.chat_template or reference.chat_template
    prompt_ids = [encode_prompt(reference.tokenizer, c, template) for c in conversations]
    comparison = compare_models(reference.model, merged, prompt_ids, greedy_tokens, reference.tokenizer)
    report = MergeReport(
        adapter_dir=str(adapter_dir),
        out_dir=str(out_dir),
        dtype=dtype,
        variant=source.variant,
        base_spec=source.base_spec,
        base_fingerprint=reference.fingerprint,
        prompts_source=prompts_source,
        n_prompts=len(prompt_ids),
        greedy_tokens=greedy_tokens,
        max_abs_logit_diff=comparison.max_abs_logit_diff,
        tolerance=LOGIT_TOLERANCES[dtype],
        greedy_equal=comparison.greedy_equal,
        first_difference=comparison.first_difference,
        seconds=round(time.perf_counter() - started, 2),
    )
    if not report.passed:
        raise MergeRefused(refusal_message(report))
    write_merged(merged, reference.model_dir, template, out_dir, report, source)
    return report


def refusal_message(report: MergeReport) -> str:
    why = []
    if report.max_abs_logit_diff > report.tolerance:
        why.append(
            f"max |logit difference| {report.max_abs_logit_diff:.3g} is above the {report.dtype} tolerance "
            f"{report.tolerance:g}"
        )
    if not report.greedy_equal:
        why.append(f"greedy answers differ ({report.first_difference})")
    return (
        f"{report.adapter_dir}: merge refused, nothing written to {report.out_dir}: {'; '.join(why)} "
        f"(merged {report.dtype} vs the unmerged adapter, {report.n_prompts} prompts from {report.prompts_source}, "
        f"{report.greedy_tokens} greedy tokens each; max |logit difference| {report.max_abs_logit_diff:.3g}, "
        f"tolerance {report.tolerance:g}); merge in fp32 (dtype='fp32', --dtype fp32), or serve the adapter unmerged"
    )


def _load_dense_base(source: AdapterSource, dtype: torch.dtype) -> LoadedBase:
    """The base's weights as the adapter was trained on them, dense in `dtype`: for QLoRA the 4-bit
    NF4 load dequantized, so the fold never re-quantizes W + s*B@A into 4 bits, and the reference
    runs the same weights as the merge (bitsandbytes' 4-bit kernel computes in bf16 on avx512_bf16
    CPUs whatever the compute dtype, which an fp32 check would measure instead of the fold)."""
    if source.variant != "qlora":
        return load_base(source.base_spec, dtype=dtype)
    base = load_base(source.base_spec, dtype=dtype, quantization_config=qlora_quantization_config(dtype))
    # before any forward: bitsandbytes 0.50 repacks a 4-bit weight for its CPU kernel on the first
    # forward, and dequantizing it after that reads the packed layout as the plain one
    base.model = base.model.dequantize(dtype=dtype)  # type: ignore[operator]
    return base


def load_unmerged(source: AdapterSource, dtype: torch.dtype) -> LoadedBase:
    """The unmerged adapter on its base, in `dtype`; refuses an adapter trained on another base."""
    base = _load_dense_base(source, dtype)
    # LoadedBase.model holds the PeftModel from here on: it runs the base and the adapter unmerged
    base.model = load_adapter(base.model, source.adapter_dir, base_fingerprint=base.fingerprint)  # type: ignore[assignment]
    base.model.eval()
    return base


def _merge_in_fp32(source: AdapterSource) -> PreTrainedModel:
    base = _load_dense_base(source, torch.float32)
    peft_model = load_adapter(base.model, source.adapter_dir, base_fingerprint=base.fingerprint)
    return peft_model.merge_and_unload()  # type: ignore[no-any-return,operator]


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, conversation: Sequence[Message], template: str | None
) -> list[int]:
    ids = tokenizer(render_prompt(tokenizer, conversation, template), add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids]


def greedy_tokens_of(model: Any, prompt: list[int], n_tokens: int, pad_id: int | None) -> list[int]:
    ids = torch.tensor([prompt], device=model.device)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n_tokens,
            do_sample=False,
            pad_token_id=pad_id,
        )
    return [int(t) for t in out[0, len(prompt) :].tolist()]


def _logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        tensor = torch.tensor([ids], device=model.device)
        return model(input_ids=tensor, use_cache=False).logits[0].float().cpu()  # type: ignore[no-any-return]


def first_difference(
    index: int, want: list[int], got: list[int], tokenizer: PreTrainedTokenizerBase, names: tuple[str, str]
) -> str:
    """Where two greedy answers part: "prompt i, token j: NAME 'text' vs NAME 'text'" (1-based)."""
    at = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), min(len(want), len(got)))
    shown = [repr(tokenizer.decode(tokens[at : at + 8])) for tokens in (want, got)]
    return f"prompt {index + 1}, token {at + 1}: {names[0]} {shown[0]} vs {names[1]} {shown[1]}"


def compare_models(
    unmerged: Any, merged: Any, prompts: Sequence[list[int]], greedy_tokens: int, tokenizer: PreTrainedTokenizerBase
) -> Comparison:
    """Greedy answers both ways, then logits of both over prompt + the unmerged model's answer."""
    max_diff, tokens, first = 0.0, 0, None
    pad_id = tokenizer.pad_token_id
    for index, prompt in enumerate(prompts):
        want = greedy_tokens_of(unmerged, prompt, greedy_tokens, pad_id)
        got = greedy_tokens_of(merged, prompt, greedy_tokens, pad_id)
        if want != got and first is None:
            first = first_difference(index, want, got, tokenizer, ("unmerged", "merged"))
        sequence = prompt + want
        diff = (_logits(unmerged, sequence) - _logits(merged, sequence)).abs().max().item()
        max_diff, tokens = max(max_diff, float(diff)), tokens + len(sequence)
    return Comparison(max_diff, first is None, first, tokens)


def write_merged(
    merged: PreTrainedModel,
    base_dir: Path,
    template: str | None,
    out_dir: Path,
    report: MergeReport,
    source: AdapterSource,
) -> Path:
    """Model safetensors + config + generation config, the base's tokenizer files with the training
    template as its `chat_template` (so plain `apply_chat_template` prompts as training did), and
    the merge record; all in a temp dir renamed into place."""
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))  # fresh: load_base sets a pad token
    if template is not None:
        tokenizer.chat_template = template
    record = {
        "format": MERGE_RECORD_FORMAT,
        **report.to_dict(),
        "adapter_files_sha256": adapter_hashes(source.adapter_dir),
        "adapter_base_fingerprint": source.base_fingerprint,
        "chat_template_sha256": sha256_text(template),
        "versions": {name: importlib.metadata.version(name) for name in ("torch", "transformers", "peft")},
    }
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_json_atomic(tmp / MERGE_RECORD_NAME, record)
    return out_dir
