"""The built-in engine on the tiny base (fp32) with real PEFT adapters: its decoder computes what HF
and PEFT compute, and batching (mixed adapters, arrivals mid-flight, eviction, aborts) never
changes a request's tokens."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from ship_adapters import make_adapter
from tiny import build_tiny_llama, save_tiny_base
from transformers import MistralConfig, MistralForCausalLM

from loraforge.errors import ModelError
from loraforge.models import load_adapter, load_base
from loraforge.serve.builtin import BuiltinEngine
from loraforge.serve.builtin.decoder import CausalAttention
from loraforge.serve.builtin.sampling import sample
from loraforge.serve.engine import AdapterWeights, GenerationRequest, Sampling, TokenEvent

LOGIT_TOLERANCE = 1e-5  # fp32: the same sums in another order
PROMPT = (5, 17, 40, 99, 3, 250, 7, 8)


def read_adapter_weights(adapter_dir: Path, name: str, version: int = 1) -> AdapterWeights:
    """A PEFT adapter dir as AdapterWeights (what serve.adapters' loader gives, without its checks)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    prefix, suffix = "base_model.model.", ".lora_A.weight"
    factors = {
        key[len(prefix) : -len(suffix)]: (a.float(), tensors[key.replace("lora_A", "lora_B")].float())
        for key, a in tensors.items()
        if key.endswith(suffix)
    }
    return AdapterWeights(
        key=f"{name}@{version}",
        name=name,
        version=version,
        rank=rank,
        scale=scale,
        factors=factors,
        chat_template=None,
        path=str(adapter_dir),
    )


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # init 0.2: logits spread wide enough that greedy runs vary (at 0.02 every row repeats one token)
    return save_tiny_base(tmp_path_factory.mktemp("engine-base"), initializer_range=0.2)


@pytest.fixture(scope="module")
def adapter_dirs(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five real PEFT adapters of ranks 2, 4, 8, 4, 2 (stacks pad to the largest), B non-zero."""
    out = tmp_path_factory.mktemp("engine-adapters")
    dirs = []
    for i, rank in enumerate((2, 4, 8, 4, 2)):
        dirs.append(make_adapter(base_dir, out / f"a{i}", r=rank, b_std=0.1 + 0.05 * i, seed=i))
    return dirs


@pytest.fixture(scope="module")
def adapters(adapter_dirs: list[Path]) -> list[AdapterWeights]:
    return [read_adapter_weights(d, f"a{i}") for i, d in enumerate(adapter_dirs)]


def _request(i: int, adapter: AdapterWeights | None, sampling: Sampling | None = None) -> GenerationRequest:
    prompt = tuple((t * (i + 3) + i) % 500 + 7 for t in PROMPT)[: 3 + i % 6]
    return GenerationRequest(f"r{i}", prompt, sampling or Sampling(max_tokens=24, temperature=0), adapter)


async def _collect(engine: BuiltinEngine, request: GenerationRequest, delay_s: float = 0.0) -> list[TokenEvent]:
    await asyncio.sleep(delay_s)
    return [event async for event in engine.generate(request)]


def _serve(engine: BuiltinEngine, requests: Sequence[GenerationRequest], stagger_s: float = 0.0) -> list[list[int]]:
    """All requests at once (request i arrives i * stagger_s late); each row's token ids."""

    async def run() -> list[list[TokenEvent]]:
        await engine.start()
        try:
            return await asyncio.gather(*(_collect(engine, r, i * stagger_s) for i, r in enumerate(requests)))
        finally:
            await engine.close()

    return [[e.token_id for e in events if e.token_id is not None] for events in asyncio.run(run())]


def _serve_alone(engine: BuiltinEngine, requests: Sequence[GenerationRequest]) -> list[list[int]]:
    return [_serve(engine, [r])[0] for r in requests]


def _events(engine: BuiltinEngine, request: GenerationRequest) -> list[TokenEvent]:
    async def run() -> list[TokenEvent]:
        await engine.start()
        try:
            return await _collect(engine, request)
        finally:
            await engine.close()

    return asyncio.run(run())


def test_decoder_logits_equal_the_hf_models_for_the_base(base_dir: Path) -> None:
    model = load_base(str(base_dir)).model
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    ours = BuiltinEngine(model).decoder.forward(
        ids, torch.arange(len(PROMPT))[None], CausalAttention(), last_only=False
    )
    assert (ours - expected).abs().max().item() <= LOGIT_TOLERANCE


def test_decoder_logits_equal_the_peft_models_for_an_adapter(
    base_dir: Path, adapter_dirs: list[Path], adapters: list[AdapterWeights]
) -> None:
    ids = torch.tensor([PROMPT])
    peft = load_adapter(load_base(str(base_dir)).model, adapter_dirs[1])
    with torch.no_grad():
        expected = peft(input_ids=ids).logits
    engine = BuiltinEngine(load_base(str(base_dir)).model)
    slot = engine.slots.acquire(adapters[1])
    assert slot is not None
    ours = engine.decoder.forward(
        ids, torch.arange(len(PROMPT))[None], CausalAttention(), engine.slots.batch([slot]), last_only=False
    )
    base_only = engine.decoder.forward(ids, torch.arange(len(PROMPT))[None], CausalAttention(), last_only=False)
    assert (ours - expected).abs().max().item() <= LOGIT_TOLERANCE
    assert (ours - base_only).abs().max().item() > 1000 * LOGIT_TOLERANCE  # the adapter does change them


def test_greedy_tokens_equal_hf_generate_of_the_peft_model(
    base_dir: Path, adapter_dirs: list[Path], adapters: list[AdapterWeights]
) -> None:
    peft = load_adapter(load_base(str(base_dir)).model, adapter_dirs[2])
    eos = int(peft.get_base_model().config.eos_token_id)
    with torch.no_grad():
        out = peft.generate(input_ids=torch.tensor([PROMPT]), max_new_tokens=32, do_sample=False)
    expected = out[0, len(PROMPT) :].tolist()
    if expected and expected[-1] == eos:
        expected = expected[:-1]
    request = GenerationRequest(
        "one", PROMPT, Sampling(max_tokens=32, temperature=0, stop_token_ids=(eos,)), adapters[2]
    )
    assert _serve(BuiltinEngine(load_base(str(base_dir)).model), [request])[0] == expected
    assert len(set(expected)) > 3  # a varied run, not one repeated token


def test_twelve_staggered_requests_over_three_adapters_and_the_base_match_each_served_alone(
    base_dir: Path, adapters: list[AdapterWeights]
) -> None:
    engine = BuiltinEngine(load_base(str(base_dir)).model, max_batch=8)
    mix = [None, adapters[0], adapters[1], adapters[2]]
    requests = [_request(i, mix[i % 4], Sampling(max_tokens=12 + 3 * i, temperature=0)) for i in range(12)]
    together = _serve(engine, requests, stagger_s=0.01)
    shared_steps = engine.stats().decode_steps
    assert together == _serve_alone(engine, requests)
    assert len({tuple(t) for t in together}) == 12  # the adapters and prompts give distinct runs
    assert shared_steps < sum(len(t) for t in together) / 2  # rows did share decode steps


def test_a_seeded_sampled_request_gives_the_same_tokens_alone_and_in_a_mixed_batch(
    base_dir: Path, adapters: list[AdapterWeights]
) -> None:
    engine = BuiltinEngine(load_base(str(base_dir)).model)
    seeded = _request(0, adapters[1], Sampling(max_tokens=20, temperature=1.0, top_p=0.9, seed=7))
    others = [
        _request(i, [None, adapters[0], adapters[2]][i % 3], Sampling(max_tokens=20, temperature=0.8, seed=i))
        for i in range(1, 6)
    ]
    alone = _serve(engine, [seeded])[0]
    batched = _serve(engine, [others[0], seeded, *others[1:]], stagger_s=0.005)[1]
    greedy = _serve(engine, [_request(0, adapters[1], Sampling(max_tokens=20, temperature=0))])[0]
    assert batched == alone
    assert alone != greedy  # it did sample


def test_closing_the_iterator_early_frees_the_row_and_the_others_finish(
    base_dir: Path, adapters: list[AdapterWeights]
) -> None:
    engine = BuiltinEngine(load_base(str(base_dir)).model)
    leaver = _request(0, adapters[0], Sampling(max_tokens=400, temperature=0))
    stayers = [_request(i, adapters[i % 2], Sampling(max_tokens=300, temperature=0)) for i in (1, 2)]

    async def run() -> tuple[int, list[list[TokenEvent]]]:
        await engine.start()
        try:
            streams = [engine.generate(r) for r in (leaver, *stayers)]
            heads = [[await anext(s) for _ in range(2)] for s in streams]  # all three are running now
            await streams[0].aclose()  # type: ignore[attr-defined]
            while engine.stats().aborted == 0:
                await asyncio.sleep(0.001)
            running_after_abort = engine.stats().running
            rests = [[e async for e in s] for s in streams[1:]]
            return running_after_abort, [h + r for h, r in zip(heads[1:], rests, strict=True)]
        finally:
            await engine.close()

    running_after_abort, finished = asyncio.run(run())
    assert running_after_abort == 2
    assert [e.finish_reason for e in finished[0] + finished[1] if e.finish_reason] == ["length", "length"]
    assert [[e.token_id for e in ev if e.token_id is not None] for ev in finished] == _serve_alone(engine, stayers)


def test_more_adapters_than_slots_evicts_and_every_request_finishes_correctly(
    base_dir: Path, adapters: list[AdapterWeights]
) -> None:
    engine = BuiltinEngine(load_base(str(base_dir)).model, max_loaded=2)
    requests = [_request(i, adapters[i % 5], Sampling(max_tokens=10 + i, temperature=0)) for i in range(10)]
    together = _serve(engine, requests, stagger_s=0.002)
    stats = engine.stats()
    assert stats.evictions > 0 and stats.loaded_adapters == 2
    assert together == _serve_alone(BuiltinEngine(load_base(str(base_dir)).model, max_loaded=8), requests)


def test_each_cold_load_is_timed_and_a_loaded_adapter_is_not_loaded_again(
    base_dir: Path, adapters: list[AdapterWeights]
) -> None:
    engine = BuiltinEngine(load_base(str(base_dir)).model)
    _serve(engine, [_request(i, adapters[i % 2], Sampling(max_tokens=3, temperature=0)) for i in range(6)])
    loads = engine.stats().cold_load_seconds
    assert len(loads) == 2 and all(seconds > 0 for seconds in loads)


def test_max_tokens_ends_the_sequence_with_length(base_dir: Path, adapters: list[AdapterWeights]) -> None:
    events = _events(BuiltinEngine(load_base(str(base_dir)).model), _request(1, adapters[0]))
    assert [e.finish_reason for e in events] == [None] * 24 + ["length"]


def test_a_stop_token_ends_the_sequence_with_stop_without_emitting_it(
    base_dir: Path, adapters: list[AdapterWeights]
) -> None:
    engine = BuiltinEngine(load_base(str(base_dir)).model)
    free_run = _serve(engine, [_request(1, adapters[0])])[0]
    stop_id = free_run[5]
    first_stop = free_run.index(stop_id)
    events = _events(
        engine, _request(1, adapters[0], Sampling(max_tokens=24, temperature=0, stop_token_ids=(stop_id,)))
    )
    assert [e.token_id for e in events] == [*free_run[:first_stop], None]
    assert events[-1].finish_reason == "stop"


def test_the_context_limit_ends_the_sequence_with_length(tmp_path: Path) -> None:
    model = build_tiny_llama(512, max_position_embeddings=16)
    events = _events(BuiltinEngine(model), GenerationRequest("long", PROMPT, Sampling(max_tokens=100, temperature=0)))
    assert len(events) == 16 - len(PROMPT) + 1 and events[-1].finish_reason == "length"


def test_a_base_of_another_architecture_is_refused_with_the_fix() -> None:
    config = MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    with pytest.raises(ModelError, match="LlamaForCausalLM only.*--engine peft"):
        BuiltinEngine(MistralForCausalLM(config))


def test_an_adapter_that_does_not_fit_the_base_fails_only_its_request(
    base_dir: Path, adapters: list[AdapterWeights]
) -> None:
    good = adapters[0]
    a, b = good.factors["model.layers.0.self_attn.q_proj"]
    factors = {"model.layers.0.self_attn.q_proj": (a[:, :10], b)}  # A made for another hidden size
    bad = AdapterWeights(
        key="bad@1",
        name="bad",
        version=1,
        rank=good.rank,
        scale=good.scale,
        factors=factors,
        chat_template=None,
        path="x",
    )
    engine = BuiltinEngine(load_base(str(base_dir)).model)

    async def run() -> list[list[TokenEvent] | BaseException]:
        await engine.start()
        try:
            return await asyncio.gather(
                _collect(engine, _request(0, bad)), _collect(engine, _request(1, good)), return_exceptions=True
            )
        finally:
            await engine.close()

    failed, served = asyncio.run(run())
    assert isinstance(failed, ModelError) and "bad@1" in str(failed) and "do not fit" in str(failed)
    assert isinstance(served, list) and served[-1].finish_reason == "length"


def test_a_tiny_temperature_samples_the_top_token_instead_of_failing() -> None:
    # 1e-300 is a temperature the API accepts; logits / 1e-300 overflowed to inf and softmax gave nan
    logits = torch.tensor([1.0, 3.0, 2.0, -1.0])
    sampling = Sampling(max_tokens=1, temperature=1e-300, seed=0)
    assert sample(logits, sampling, torch.Generator().manual_seed(0)) == 1
