"""The OpenAI-compatible server over a real socket, called with the official `openai` client.

One server for the module: the tiny base, a registry with three real PEFT adapters (B non-zero,
so each changes the output), and five tenants: acme (alpha + base), globex (beta, no base),
solo (alpha, one request at a time), initech (alpha, beta and the base), and nobody's adapter gamma.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_http_support import BODY_LIMIT, CHECKS_LIMITS, HELLO, Served, client_checks_registry, serving, start_served

from loraforge.serve.feedback import FeedbackStore

GREEDY = {"temperature": 0, "max_tokens": 16}


@pytest.fixture(scope="module", params=["builtin", "peft"])
def served(
    request: pytest.FixtureRequest, tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The same client checks on both engines: the HTTP layer knows them only as `Engine`
    (and on vLLM: tests/test_serve_vllm.py runs these functions against its own server)."""
    work = tmp_path_factory.mktemp("serve")
    registry, tenants = client_checks_registry(tiny_base_dir, work)
    yield from serving(start_served(tiny_base_dir, registry, tenants, work, limits=CHECKS_LIMITS, engine=request.param))


def chat(served: Served, tenant: str, model: str, **kwargs: object) -> openai.types.chat.ChatCompletion:
    return served.client(tenant).chat.completions.create(model=model, messages=HELLO, **{**GREEDY, **kwargs})  # type: ignore[arg-type]


def test_tenants_get_their_own_adapters_outputs(served: Served) -> None:
    alpha = chat(served, "acme", "alpha").choices[0].message.content
    beta = chat(served, "globex", "beta").choices[0].message.content
    base = chat(served, "acme", served.model_id).choices[0].message.content
    assert alpha and beta and base
    assert len({alpha, beta, base}) == 3


def test_response_names_the_served_adapter_version(served: Served) -> None:
    answer = chat(served, "acme", "alpha")
    assert answer.model == "alpha@1"
    assert chat(served, "acme", "alpha@1").choices[0].message.content == answer.choices[0].message.content


def test_streamed_chat_equals_non_streamed(served: Served) -> None:
    whole = chat(served, "acme", "alpha", max_tokens=40)
    stream = served.client("acme").chat.completions.create(
        model="alpha", messages=HELLO, stream=True, **{**GREEDY, "max_tokens": 40}
    )  # type: ignore[call-overload]
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_streamed_completion_equals_non_streamed(served: Served) -> None:
    client = served.client("acme")
    whole = client.completions.create(model="alpha", prompt="the order of", temperature=0, max_tokens=30)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="alpha", prompt="the order of", temperature=0, max_tokens=30, stream=True
    ) if c.choices)  # fmt: skip
    assert whole.choices[0].text and streamed == whole.choices[0].text


def test_stream_usage_chunk_comes_last_with_the_counts(served: Served) -> None:
    whole = chat(served, "acme", "alpha")
    stream = served.client("acme").chat.completions.create(
        model="alpha",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,  # type: ignore[arg-type]
    )
    chunks = list(stream)
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens  # type: ignore[union-attr]
    assert usage_chunk.usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert all(c.usage is None for c in chunks[:-1])


def test_usage_counts_prompt_and_completion_tokens(served: Served) -> None:
    answer = chat(served, "acme", "alpha", max_tokens=7)
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 5
    assert answer.usage.completion_tokens <= 7
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_stop_string_cuts_the_answer_before_it(served: Served) -> None:
    full = chat(served, "acme", "alpha", max_tokens=40).choices[0].message.content or ""
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert len(stop) == 3
    cut = chat(served, "acme", "alpha", max_tokens=40, stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_stop_string_cuts_the_stream_too(served: Served) -> None:
    full = chat(served, "acme", "alpha", max_tokens=40).choices[0].message.content or ""
    stop = full[len(full) // 3 : len(full) // 3 + 2]
    stream = served.client("acme").chat.completions.create(
        model="alpha", messages=HELLO, stream=True, stop=stop, **{**GREEDY, "max_tokens": 40}
    )  # type: ignore[call-overload]
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == full[: full.index(stop)]


def test_seeded_sampling_repeats_and_seeds_differ(served: Served) -> None:
    sampled = [
        chat(served, "acme", "alpha", temperature=1.0, seed=s, max_tokens=24).choices[0].message.content
        for s in (7, 7, 8)
    ]
    assert sampled[0] == sampled[1]
    assert sampled[0] != sampled[2]


def test_other_tenants_adapter_gets_the_missing_adapter_404(served: Served) -> None:
    missing = served.post("/v1/chat/completions", "acme", {"model": "no-such-adapter", "messages": HELLO})
    forbidden = served.post("/v1/chat/completions", "acme", {"model": "beta", "messages": HELLO})
    assert missing.status_code == forbidden.status_code == 404
    # the body depends only on the name the client sent
    assert forbidden.text == missing.text.replace("no-such-adapter", "beta")
    assert forbidden.json()["error"]["code"] == "model_not_found"


def test_tenant_without_base_access_gets_404_for_the_base(served: Served) -> None:
    with pytest.raises(openai.NotFoundError):
        chat(served, "globex", served.model_id)


@pytest.mark.parametrize("model", ["../etc", "../../etc/passwd", "alpha/../beta", "alpha@../1", "ALPHA", "alpha@0"])
def test_path_like_or_malformed_model_is_404(served: Served, model: str) -> None:
    response = served.post("/v1/chat/completions", "acme", {"model": model, "messages": HELLO})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_unknown_key_is_401(served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="lf-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="alpha", messages=HELLO)  # type: ignore[arg-type]


def test_missing_key_is_401_in_openai_shape(served: Served) -> None:
    response = served.post("/v1/chat/completions", None, {"model": "alpha", "messages": HELLO})
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_models_lists_only_what_the_tenant_may_use(served: Served) -> None:
    assert [m.id for m in served.client("acme").models.list()] == [served.model_id, "alpha"]
    assert [m.id for m in served.client("globex").models.list()] == ["beta"]


def test_health_needs_no_key(served: Served) -> None:
    response = served.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_invalid_body_is_400_naming_the_field(served: Served) -> None:
    response = served.post(
        "/v1/chat/completions", "acme", {"model": "alpha", "messages": [{"role": "wizard", "content": "x"}]}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith("messages.0.role")


def test_n_other_than_one_is_400(served: Served) -> None:
    with pytest.raises(openai.BadRequestError, match="n=2"):
        chat(served, "acme", "alpha", n=2)


def test_max_tokens_over_the_cap_is_400(served: Served) -> None:
    with pytest.raises(openai.BadRequestError, match="cap of 400"):
        chat(served, "acme", "alpha", max_tokens=401)


def test_prompt_longer_than_the_context_is_400(served: Served) -> None:
    long = [{"role": "user", "content": "order " * 600}]  # the tiny base's context is 512 tokens
    with pytest.raises(openai.BadRequestError, match="context is 512"):
        served.client("acme").chat.completions.create(model="alpha", messages=long, max_tokens=4)  # type: ignore[arg-type]


def test_body_over_the_limit_is_413(served: Served) -> None:
    big = [{"role": "user", "content": "x" * (BODY_LIMIT + 1)}]
    response = served.post("/v1/chat/completions", "acme", {"model": "alpha", "messages": big})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_requests_over_the_tenants_concurrency_limit_get_429(served: Served) -> None:
    headers = {"Authorization": f"Bearer {served.keys['solo']}"}
    # greedy on the base repeats one token, so this stream runs to its 400 tokens (seconds) and holds the slot
    long = {"model": served.model_id, "messages": HELLO, "temperature": 0, "max_tokens": 400, "stream": True}
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=long, headers=headers, timeout=120) as first:
        lines = first.iter_lines()
        assert next(lines).startswith("data: ")
        second = served.post("/v1/chat/completions", "solo", {"model": "alpha", "messages": HELLO, "max_tokens": 2})
        rest = list(lines)
    assert second.status_code == 429
    assert "limit is 1" in second.json()["error"]["message"]
    finish = [json.loads(line[6:]) for line in rest if line.startswith("data: {")][-1]
    assert finish["choices"][0]["finish_reason"] == "length"  # it was still running when the second came


def test_slot_is_free_again_after_a_stream(served: Served) -> None:
    for _ in range(2):
        stream = served.client("solo").chat.completions.create(model="alpha", messages=HELLO, stream=True, **GREEDY)  # type: ignore[call-overload]
        assert list(stream)


def test_feedback_round_trip_lands_on_disk(served: Served) -> None:
    answer = chat(served, "acme", "alpha")
    response = served.post("/v1/feedback", "acme", {"id": answer.id, "rating": -1, "edited": "Your order ships today."})
    assert response.status_code == 200
    with FeedbackStore(served.feedback_path, retention_days=None, create=False) as store:  # a second reader
        row = store.get(answer.id, "acme")
    assert row is not None
    assert (row.rating, row.edited, row.answer) == (-1, "Your order ships today.", answer.choices[0].message.content)


def test_streamed_completions_are_recorded_for_feedback(served: Served) -> None:
    stream = served.client("acme").chat.completions.create(model="alpha", messages=HELLO, stream=True, **GREEDY)  # type: ignore[call-overload]
    chunks = list(stream)
    response = served.post("/v1/feedback", "acme", {"id": chunks[0].id, "rating": 1})
    assert response.status_code == 200


def test_feedback_on_another_tenants_completion_is_404(served: Served) -> None:
    answer = chat(served, "acme", "alpha")
    response = served.post("/v1/feedback", "globex", {"id": answer.id, "rating": 1})
    assert response.status_code == 404
    unknown = served.post("/v1/feedback", "globex", {"id": "chatcmpl-unknown", "rating": 1})
    assert response.json()["error"]["message"] == unknown.json()["error"]["message"].replace(
        "chatcmpl-unknown", answer.id
    )


def test_metrics_count_requests_tokens_and_adapter_cache(served: Served) -> None:
    chat(served, "acme", "alpha")
    chat(served, "acme", "alpha")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(served.get("/metrics", "acme").text)
        for s in family.samples
    }
    assert samples[("loraforge_requests_total", (("route", "/v1/chat/completions"), ("status", "200")))] >= 2
    assert samples[("loraforge_prompt_tokens_total", ())] > 0
    assert samples[("loraforge_completion_tokens_total", ())] > 0
    assert samples[("loraforge_time_to_first_token_seconds_count", ())] >= 2
    assert samples[("loraforge_adapter_cache_hits_total", ())] >= 1
    assert samples[("loraforge_adapter_cache_misses_total", ())] >= 1
    assert samples[("loraforge_adapters_loaded", ())] >= 1
    assert ("loraforge_engine_waiting", ()) in samples


def test_metrics_need_a_key(served: Served) -> None:
    assert served.get("/metrics").status_code == 401


def test_concurrent_requests_of_two_tenants_each_get_their_adapter(served: Served) -> None:
    expected = {"acme": chat(served, "acme", "alpha").choices[0].message.content}
    expected["globex"] = chat(served, "globex", "beta").choices[0].message.content
    got: dict[str, str | None] = {}

    def call(tenant: str, model: str) -> None:
        got[tenant] = chat(served, tenant, model).choices[0].message.content

    threads = [threading.Thread(target=call, args=args) for args in (("acme", "alpha"), ("globex", "beta"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == expected


def test_twelve_concurrent_mixed_requests_each_equal_their_answer_alone(served: Served) -> None:
    """Three adapters' worth of tenants, the base, different prompts and lengths, half streamed, arriving
    staggered so rows join a running batch: each greedy answer equals the same request served alone."""
    base = served.model_id
    plan = [  # four a tenant: each tenant's concurrency limit
        ("acme", "alpha"), ("globex", "beta"), ("initech", base), ("acme", base),
        ("initech", "beta"), ("globex", "beta"), ("acme", "alpha"), ("initech", "alpha"),
        ("globex", "beta"), ("acme", base), ("initech", base), ("globex", "beta"),
    ]  # fmt: skip
    requests = [
        (tenant, model, [{"role": "user", "content": f"order {i}: {'where is it? ' * (1 + i % 4)}"}], 6 + 2 * (i % 5))
        for i, (tenant, model) in enumerate(plan)
    ]

    def ask(i: int, stream: bool) -> str:
        tenant, model, messages, max_tokens = requests[i]
        client = served.client(tenant)
        if not stream:
            reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens)  # type: ignore[arg-type]
            return reply.choices[0].message.content or ""
        chunks = client.chat.completions.create(
            model=model,
            messages=messages,
            temperature=0,
            max_tokens=max_tokens,
            stream=True,  # type: ignore[arg-type]
        )
        return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)

    alone = [ask(i, stream=False) for i in range(len(requests))]
    together: list[str | BaseException | None] = [None] * len(requests)

    def call(i: int) -> None:
        try:
            together[i] = ask(i, stream=i % 2 == 1)
        except BaseException as exc:  # shown in the assertion below, not lost in a thread
            together[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for i, thread in enumerate(threads):
        thread.start()
        if i % 3 == 2:
            threading.Event().wait(0.05)  # staggered: later rows join the running batch mid-decode
    for thread in threads:
        thread.join()
    assert together == alone
    assert len({alone[0], alone[1], alone[2]}) == 3  # alpha, beta and the base differ: the check can fail
