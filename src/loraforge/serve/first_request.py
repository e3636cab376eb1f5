"""One request through the official openai client against a real `loraforge serve` on loopback:
the demo's last step, so a newcomer sees their adapter served before they start a server of their own.

The server is the one `loraforge serve` builds (the same options, adapter checks and engine), bound
to 127.0.0.1 on a free port in a background thread and stopped once it has answered. The tenant is
written to the given tenants.yaml with a fresh key (re-keyed on a second run), allowed the one adapter.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import openai

from loraforge.errors import LoraforgeError
from loraforge.serve.background import BackgroundServer
from loraforge.serve.server import ServeOptions, bind, build_server
from loraforge.serve.tenants import Tenants, add_tenant

CLIENT_TIMEOUT_S = 300.0  # one answer of max_tokens from a loaded 2-core CPU; not a measurement


@dataclass(frozen=True)
class FirstAnswer:
    url: str
    tenant: str
    model: str  # what the server says answered: NAME@VERSION
    answer: str
    completion_tokens: int
    finish_reason: str
    start_seconds: float  # loading the base, the engine and the app, until the socket answers
    request_seconds: float  # the request, from the client's side, the adapter's cold load with it


def answer_one(
    options: ServeOptions, adapter: str, messages: list[dict[str, str]], *, tenant: str = "demo", max_tokens: int = 64
) -> FirstAnswer:
    """Serve `options` on loopback, ask `adapter` the chat `messages` as tenant `tenant` (greedy), stop."""
    tenants_file = options.tenants
    tenants_file.parent.mkdir(parents=True, exist_ok=True)
    known = tenants_file.is_file() and Tenants.load(tenants_file).get(tenant) is not None
    key = add_tenant(tenants_file, tenant, [adapter], base=True, rotate=known)
    started = time.perf_counter()
    options = dataclasses.replace(options, host="127.0.0.1", port=0)
    built = build_server(options)
    try:
        with BackgroundServer(built.app, bind(options.host, options.port)) as live:
            ready = time.perf_counter()
            client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT_S)
            try:
                reply = client.chat.completions.create(
                    model=adapter,
                    messages=messages,  # type: ignore[arg-type]  # role/content dicts, as the API takes them
                    temperature=0,
                    max_tokens=max_tokens,
                )
            except openai.APIStatusError as exc:
                raise LoraforgeError(
                    f"the server refused the request for {adapter!r} ({exc.status_code}): {exc.message}; "
                    "its log above gives the reason"
                ) from exc
            answered = time.perf_counter()
    finally:
        built.feedback.close()
    choice = reply.choices[0]
    return FirstAnswer(
        url=live.url,
        tenant=tenant,
        model=reply.model,
        answer=choice.message.content or "",
        completion_tokens=reply.usage.completion_tokens if reply.usage is not None else 0,
        finish_reason=str(choice.finish_reason),
        start_seconds=ready - started,
        request_seconds=answered - ready,
    )
