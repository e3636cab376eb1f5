"""Serving benchmark: the built-in engine against PEFT, greedy fixed-length outputs.

    PYTHONPATH=src nice -n 19 python bench/serve_engine.py                       # tiny random Llama
    PYTHONPATH=src nice -n 19 python bench/serve_engine.py --base smollm2-135m-instruct

Every arm serves the same `--requests` prompts (all arriving at t=0), each asked for exactly
`--tokens` tokens (no stop ids). Arms: ours base-only; ours with 1, 4 and 16 adapters, uniform
(round-robin) and Zipf mixes; PEFT `set_adapter` per request, one request at a time; PEFT
`generate(adapter_names=...)` over the whole mixed batch. Before timing, each mix is checked: every
request's tokens in the mixed batch equal the same request served alone by our engine, and equal
PEFT's greedy tokens for that adapter. Arms run interleaved (`--rounds` rounds of every arm), and
the table gives each arm's median round. Adapters are random rank-`--rank` factors on all seven
linears, the same tensors in both engines. Peak RSS is the process's (both copies of the base are
resident throughout), sampled every 10 ms during the arm.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessor, LogitsProcessorList

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from loraforge.files import write_json_atomic  # noqa: E402
from loraforge.serve.builtin import BuiltinEngine  # noqa: E402
from loraforge.serve.engine import AdapterWeights, GenerationRequest, Sampling  # noqa: E402

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ZIPF_S = 1.1  # a few hot tenants, a long tail
BASE_NAME = "__base__"  # PEFT's adapter_names entry for a row on the bare base


@dataclass
class Run:
    """One arm's round: per-request timings (seconds from the common start)."""

    wall_s: float
    ttft_s: list[float]
    tpot_s: list[float]
    tokens: int
    peak_rss_bytes: int
    cold_load_s: list[float] = field(default_factory=list)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def build_base(spec: str, dtype: torch.dtype) -> LlamaForCausalLM:
    if spec == "tiny":  # the test base's shape, random weights: measures the engine's own overhead
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            initializer_range=0.2,
        )
        config._attn_implementation = "sdpa"
        return LlamaForCausalLM(config).to(dtype).eval()
    from loraforge.models import load_base

    return load_base(spec, dtype=dtype).model.eval()  # type: ignore[no-any-return]


def make_adapters(model: LlamaForCausalLM, n: int, rank: int, seed: int = 0) -> list[AdapterWeights]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.endswith(TARGETS)
    }
    adapters = []
    for i in range(n):
        factors = {
            name: (
                torch.randn(rank, fan_in, generator=generator) / fan_in**0.5,
                torch.randn(fan_out, rank, generator=generator) * 0.02,
            )
            for name, (fan_in, fan_out) in shapes.items()
        }
        adapters.append(
            AdapterWeights(
                key=f"a{i}@1",
                name=f"a{i}",
                version=1,
                rank=rank,
                scale=2.0,
                factors=factors,
                chat_template=None,
                path="(random)",
            )
        )
    return adapters


def peft_model(base: LlamaForCausalLM, adapters: list[AdapterWeights]) -> tuple[Any, list[float]]:
    """PEFT over `base` (wrapped in place) with every adapter; returns it and each add's seconds."""
    model: Any = None
    seconds = []
    for adapter in adapters:
        started = time.perf_counter()
        config = LoraConfig(
            r=adapter.rank,
            lora_alpha=adapter.scale * adapter.rank,
            lora_dropout=0.0,
            target_modules=list(TARGETS),
            inference_mode=True,
        )
        if model is None:
            model = get_peft_model(base, config, adapter_name=adapter.name)
        else:
            model.add_adapter(adapter.name, config)
        with torch.no_grad():
            for module, (a, b) in adapter.factors.items():
                layer = model.base_model.model.get_submodule(module)
                layer.lora_A[adapter.name].weight.copy_(a)
                layer.lora_B[adapter.name].weight.copy_(b)
        seconds.append(time.perf_counter() - started)
    return model.eval(), seconds


def prompts(n: int, vocab: int, seed: int = 0) -> list[tuple[int, ...]]:
    rng = random.Random(seed)
    return [tuple(rng.randrange(3, vocab) for _ in range(rng.randint(16, 48))) for _ in range(n)]


def mix(kind: str, n_adapters: int, n_requests: int, seed: int = 0) -> list[int | None]:
    """Which adapter each request uses: None (base), round-robin, or Zipf-distributed."""
    if n_adapters == 0:
        return [None] * n_requests
    if kind == "uniform":
        return [i % n_adapters for i in range(n_requests)]
    rng = random.Random(seed)
    weights = [1 / (k + 1) ** ZIPF_S for k in range(n_adapters)]
    return rng.choices(range(n_adapters), weights=weights, k=n_requests)


class RssPeak:
    """Samples the process RSS every 10 ms while in the block."""

    def __enter__(self) -> RssPeak:
        self.peak = psutil.Process().memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_ours(
    base: LlamaForCausalLM, requests: list[GenerationRequest], max_batch: int, max_loaded: int
) -> tuple[Run, list[list[int]]]:
    engine = BuiltinEngine(base, max_batch=max_batch, max_loaded=max_loaded)

    async def one(request: GenerationRequest, start: float) -> tuple[list[int], list[float]]:
        tokens, stamps = [], []
        async for event in engine.generate(request):
            if event.token_id is not None:
                tokens.append(event.token_id)
                stamps.append(time.perf_counter() - start)
        return tokens, stamps

    async def serve() -> list[tuple[list[int], list[float]]]:
        await engine.start()
        try:
            start = time.perf_counter()
            return await asyncio.gather(*(one(r, start) for r in requests))
        finally:
            await engine.close()

    with RssPeak() as rss:
        started = time.perf_counter()
        results = asyncio.run(serve())
        wall = time.perf_counter() - started
    stamps = [s for _, s in results]
    run = Run(
        wall,
        [s[0] for s in stamps],
        [(s[-1] - s[0]) / max(1, len(s) - 1) for s in stamps],
        sum(len(t) for t, _ in results),
        rss.peak,
        list(engine.stats().cold_load_seconds),
    )
    return run, [t for t, _ in results]


class _Stamps(LogitsProcessor):
    """Records when each generation step's logits are ready (that step's tokens are picked next)."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.times.append(time.perf_counter() - self.start)
        return scores


def _peft_generate(
    model: Any, batch: list[tuple[int, ...]], names: list[str] | None, tokens: int, start: float
) -> tuple[list[list[int]], list[float]]:
    """One left-padded batch through PEFT generate; per-step times from the common start."""
    width = max(len(p) for p in batch)
    ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    stamps = _Stamps(start)
    extra = {"adapter_names": names} if names is not None else {}
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
            logits_processor=LogitsProcessorList([stamps]),
            **extra,
        )
    return out[:, width:].tolist(), stamps.times


@contextlib.contextmanager
def _active(model: Any, name: str) -> Iterator[None]:
    if name == BASE_NAME:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(name)
        yield


def run_peft(
    model: Any, batch: list[tuple[int, ...]], names: list[str], tokens: int, mixed: bool
) -> tuple[Run, list[list[int]]]:
    """mixed: one generate over the whole batch with adapter_names; else one request at a time
    after set_adapter (requests queue behind each other, so their TTFT includes the wait)."""
    ttft, tpot, outputs = [], [], []
    with RssPeak() as rss:
        start = time.perf_counter()
        if mixed:
            outputs, times = _peft_generate(model, batch, names, tokens, start)
            ttft, tpot = [times[0]] * len(batch), [(times[-1] - times[0]) / max(1, len(times) - 1)] * len(batch)
        else:
            for prompt, name in zip(batch, names, strict=True):
                with _active(model, name):
                    out, times = _peft_generate(model, [prompt], None, tokens, start)
                outputs += out
                ttft.append(times[0])
                tpot.append((times[-1] - times[0]) / max(1, len(times) - 1))
        wall = time.perf_counter() - start
    return Run(wall, ttft, tpot, sum(len(o) for o in outputs), rss.peak), outputs


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Arm:
    label: str
    engine: str  # "ours", "peft-set_adapter", "peft-adapter_names"
    n_adapters: int
    kind: str  # "uniform" or "zipf"


def arms(peft_mixes: list[tuple[int, str]]) -> list[Arm]:
    ours = [Arm("ours, base only", "ours", 0, "uniform"), Arm("ours, 1 adapter", "ours", 1, "uniform")]
    ours += [Arm(f"ours, {n} adapters {kind}", "ours", n, kind) for n in (4, 16) for kind in ("uniform", "zipf")]
    peft = [
        Arm(f"PEFT {how}, {n} adapters {kind}", f"peft-{how}", n, kind)
        for n, kind in peft_mixes
        for how in ("set_adapter", "adapter_names")
    ]
    return ours + peft


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = build_base(args.base, torch.float32)
        self.adapters = make_adapters(self.base, 16, args.rank)
        # PEFT wraps its base in place, so it gets a copy: the built-in engine reads plain nn.Linear weights
        self.peft, self.peft_add_s = peft_model(copy.deepcopy(self.base), self.adapters)
        self.prompts = prompts(args.requests, int(self.base.config.vocab_size))
        self.alone: dict[tuple[int, int | None], list[int]] = {}

    def requests(self, arm: Arm) -> list[GenerationRequest]:
        sampling = Sampling(max_tokens=self.args.tokens, temperature=0)
        return [
            GenerationRequest(f"r{i}", p, sampling, None if a is None else self.adapters[a])
            for i, (p, a) in enumerate(zip(self.prompts, mix(arm.kind, arm.n_adapters, len(self.prompts)), strict=True))
        ]

    def names(self, arm: Arm) -> list[str]:
        return [BASE_NAME if a is None else f"a{a}" for a in mix(arm.kind, arm.n_adapters, len(self.prompts))]

    def run(self, arm: Arm) -> tuple[Run, list[list[int]]]:
        if arm.engine == "ours":
            return run_ours(self.base, self.requests(arm), self.args.max_batch, max_loaded=16)
        return run_peft(self.peft, self.prompts, self.names(arm), self.args.tokens, arm.engine.endswith("names"))

    def check(self, arm: Arm) -> str:
        """Ours batched against ours alone, request by request; PEFT's greedy against ours alone."""
        _, batched = run_ours(self.base, self.requests(arm), self.args.max_batch, max_loaded=16)
        chosen = mix(arm.kind, arm.n_adapters, len(self.prompts))
        for i, request in enumerate(self.requests(arm)[: self.args.check]):
            if (i, chosen[i]) not in self.alone:
                self.alone[(i, chosen[i])] = run_ours(self.base, [request], 1, max_loaded=1)[1][0]
        checked = range(min(self.args.check, len(self.prompts)))
        same = sum(batched[i] == self.alone[(i, chosen[i])] for i in checked)
        _, peft_out = run_peft(
            self.peft, self.prompts[: len(checked)], self.names(arm)[: len(checked)], self.args.tokens, mixed=False
        )
        peft_same = sum(peft_out[i] == self.alone[(i, chosen[i])] for i in checked)
        return f"{same}/{len(checked)} alone, {peft_same}/{len(checked)} PEFT"


def table(results: dict[Arm, list[Run]], checks: dict[Arm, str]) -> str:
    lines = [
        "| arm | batched = alone; = PEFT | tok/s | req/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms "
        "| peak RSS MiB | cold load ms p50 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, runs in results.items():
        wall = statistics.median(r.wall_s for r in runs)
        tokens = runs[0].tokens
        ttft = [t for r in runs for t in r.ttft_s]
        tpot = [t for r in runs for t in r.tpot_s]
        loads = [s for r in runs for s in r.cold_load_s]
        load = f"{1000 * statistics.median(loads):.2f}" if loads else "-"
        lines.append(
            f"| {arm.label} | {checks.get(arm, '-')} | {tokens / wall:.1f} | {len(runs[0].ttft_s) / wall:.2f} "
            f"| {1000 * pct(ttft, 0.5):.1f} | {1000 * pct(ttft, 0.99):.1f} | {1000 * pct(tpot, 0.5):.2f} "
            f"| {1000 * pct(tpot, 0.99):.2f} | {max(r.peak_rss_bytes for r in runs) / 2**20:.0f} | {load} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="tiny", help="'tiny' (random test-shaped Llama) or a loraforge base spec")
    parser.add_argument("--requests", type=int, default=16, help="concurrent requests per arm, all at t=0")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per request (fixed length)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of every adapter (all seven linears)")
    parser.add_argument("--max-batch", type=int, default=16, help="the built-in engine's rows per step")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every arm")
    parser.add_argument("--check", type=int, default=16, help="requests per mix checked before timing")
    parser.add_argument("--peft-mixes", default="4:uniform,16:uniform", help="N:KIND mixes the PEFT arms serve")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    peft_mixes = [(int(n), kind) for n, kind in (m.split(":") for m in args.peft_mixes.split(","))]
    bench = Bench(args)
    plan = arms(peft_mixes)
    print(
        f"CPU: {cpu_name()} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()}); base {args.base} "
        f"fp32; {args.requests} requests x {args.tokens} tokens, rank {args.rank}, {args.rounds} rounds",
        flush=True,
    )
    checks = {arm: bench.check(arm) for arm in plan if arm.engine == "ours"}
    for arm, verdict in checks.items():
        print(f"check {arm.label}: {verdict}", flush=True)
    results: dict[Arm, list[Run]] = {arm: [] for arm in plan}
    for round_ in range(args.rounds):
        for arm in plan:
            run, _ = bench.run(arm)
            results[arm].append(run)
            print(f"round {round_ + 1} {arm.label}: {run.tokens / run.wall_s:.1f} tok/s", flush=True)
    report = table(results, checks)
    peft_load = f"PEFT add_adapter + copy, cold load ms p50: {1000 * statistics.median(bench.peft_add_s):.2f}"
    print("\n" + report + "\n\n" + peft_load)
    if args.json is not None:
        payload = {
            "cpu": cpu_name(),
            "args": vars(args) | {"json": str(args.json)},
            "checks": {a.label: v for a, v in checks.items()},
            "runs": {a.label: [vars(r) for r in rs] for a, rs in results.items()},
            "peft_add_seconds": bench.peft_add_s,
        }
        write_json_atomic(args.json, payload)


if __name__ == "__main__":
    main()
