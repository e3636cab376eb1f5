"""PeftEngine, the baseline engine the HTTP tests run on: its tokens match PEFT's own generate,
the base is the base again after an adapter, closing a stream aborts the sequence."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from serve_http_support import publish_live
from ship_adapters import make_adapter

from loraforge.models import load_base
from loraforge.serve.adapters import AdapterStore, ServedBase
from loraforge.serve.engine import AdapterWeights, GenerationRequest, Sampling, TokenEvent
from loraforge.serve.peft_engine import PeftEngine
from loraforge.ship.registry import Registry

PROMPT = "hello the order is late"
TOKENS = 12


@dataclasses.dataclass
class Setup:
    base_dir: Path
    adapter_dirs: dict[str, Path]
    weights: dict[str, AdapterWeights]
    prompt_ids: tuple[int, ...]


@pytest.fixture(scope="module")
def setup(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    work = tmp_path_factory.mktemp("peft-engine")
    registry = Registry(work / "registry")
    dirs = {"alpha": make_adapter(tiny_base_dir, work / "alpha", r=4, b_std=0.1),
            "beta": make_adapter(tiny_base_dir, work / "beta", r=8, b_std=0.3, seed=1)}  # fmt: skip
    for name, path in dirs.items():
        publish_live(registry, path, name)
    loaded = load_base(str(tiny_base_dir))
    store = AdapterStore(registry, ServedBase.from_loaded(loaded))
    prompt_ids = tuple(loaded.tokenizer(PROMPT)["input_ids"])
    return Setup(tiny_base_dir, dirs, {name: store.get(name) for name in dirs}, prompt_ids)


@pytest.fixture
def engine(setup: Setup) -> Iterator[PeftEngine]:
    engine = PeftEngine(load_base(str(setup.base_dir)).model, max_loaded=1)
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


def reference_greedy(setup: Setup, adapter: str | None) -> list[int]:
    """PEFT's own generate on a fresh base: what the engine must reproduce."""
    model = load_base(str(setup.base_dir)).model
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(setup.adapter_dirs[adapter]))
    ids = torch.tensor([setup.prompt_ids])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=TOKENS, do_sample=False)  # type: ignore[operator]
    return [int(t) for t in out[0, len(setup.prompt_ids) :]]


async def _events(engine: PeftEngine, request: GenerationRequest) -> list[TokenEvent]:
    return [event async for event in engine.generate(request)]


def run(engine: PeftEngine, setup: Setup, adapter: AdapterWeights | None, **sampling: object) -> list[TokenEvent]:
    options = {"max_tokens": TOKENS, "temperature": 0.0, **sampling}
    request = GenerationRequest("r", setup.prompt_ids, Sampling(**options), adapter)  # type: ignore[arg-type]
    return asyncio.run(_events(engine, request))


def tokens(events: list[TokenEvent]) -> list[int]:
    return [e.token_id for e in events if e.token_id is not None]


def test_greedy_tokens_match_peft_generate_for_each_adapter(engine: PeftEngine, setup: Setup) -> None:
    for name in ("alpha", "beta"):
        assert tokens(run(engine, setup, setup.weights[name])) == reference_greedy(setup, name)


def test_base_after_an_adapter_is_the_plain_base(engine: PeftEngine, setup: Setup) -> None:
    run(engine, setup, setup.weights["alpha"])
    assert tokens(run(engine, setup, None)) == reference_greedy(setup, None)


def test_adapter_loads_by_path_when_it_has_no_factors(engine: PeftEngine, setup: Setup) -> None:
    by_path = dataclasses.replace(setup.weights["alpha"], key="alpha@path", factors={})
    assert tokens(run(engine, setup, by_path)) == reference_greedy(setup, "alpha")


def test_evicted_adapter_reloads_with_the_same_output(engine: PeftEngine, setup: Setup) -> None:
    first = tokens(run(engine, setup, setup.weights["alpha"]))
    run(engine, setup, setup.weights["beta"])  # max_loaded=1: alpha is deleted here
    assert engine.stats().loaded_adapters == 1
    assert tokens(run(engine, setup, setup.weights["alpha"])) == first


def test_sequence_ends_with_length_after_max_tokens(engine: PeftEngine, setup: Setup) -> None:
    events = run(engine, setup, None, max_tokens=5)
    assert len(tokens(events)) == 5 and events[-1] == TokenEvent(None, "length")


def test_stop_token_ends_the_sequence_without_emitting_it(engine: PeftEngine, setup: Setup) -> None:
    greedy = reference_greedy(setup, "alpha")
    events = run(engine, setup, setup.weights["alpha"], stop_token_ids=(greedy[2],))
    assert tokens(events) == greedy[:2]
    assert events[-1] == TokenEvent(None, "stop")


def test_seeded_sampling_repeats(engine: PeftEngine, setup: Setup) -> None:
    first = tokens(run(engine, setup, None, temperature=1.0, seed=11))
    assert tokens(run(engine, setup, None, temperature=1.0, seed=11)) == first
    assert tokens(run(engine, setup, None, temperature=1.0, seed=12)) != first


def test_tiny_top_p_keeps_only_the_top_token(engine: PeftEngine, setup: Setup) -> None:
    sampled = tokens(run(engine, setup, setup.weights["alpha"], temperature=1.5, top_p=1e-6, seed=3))
    assert sampled == reference_greedy(setup, "alpha")


async def _abort_then_next(engine: PeftEngine, setup: Setup) -> list[TokenEvent]:
    long = engine.generate(GenerationRequest("long", setup.prompt_ids, Sampling(max_tokens=400, temperature=0.0)))
    assert isinstance(long, AsyncIterator)
    await long.__anext__()
    await long.aclose()  # type: ignore[attr-defined]
    return await _events(engine, GenerationRequest("next", setup.prompt_ids, Sampling(max_tokens=3, temperature=0.0)))


def test_closing_a_stream_aborts_its_sequence(engine: PeftEngine, setup: Setup) -> None:
    after = asyncio.run(_abort_then_next(engine, setup))
    assert len(tokens(after)) == 3
    # one worker, in order: "next" ran after "long" stopped, and long stopped far short of 400
    assert engine.generated_tokens < 400
