"""Request bodies to prompt token ids, in the served adapter's own chat template, within limits."""

from __future__ import annotations

import jinja2

from loraforge.serve.engine import AdapterWeights
from loraforge.serve.http.context import ServeContext
from loraforge.serve.http.errors import ApiError
from loraforge.serve.http.schemas import ChatCompletionRequest, CompletionRequest

Conversation = list[dict[str, str]]


def chat_prompt(
    ctx: ServeContext, body: ChatCompletionRequest, adapter: AdapterWeights | None
) -> tuple[list[int], Conversation]:
    """Token ids of the conversation rendered for generation, and the conversation as recorded.

    The template is the adapter's own (what it was trained on), the base's for the base or an
    adapter that records none: a mismatched template is the usual cause of an adapter that
    "forgot" its training."""
    # developer is OpenAI's newer name for the system role; chat templates know only system
    conversation = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    template = (adapter.chat_template if adapter is not None else None) or ctx.base.chat_template
    if template is None:
        raise ApiError(
            400,
            f"The model `{body.model}` has no chat template; send a plain prompt to /v1/completions.",
            param="model",
        )
    try:
        text = ctx.tokenizer.apply_chat_template(
            conversation, chat_template=template, add_generation_prompt=True, tokenize=False
        )
    except jinja2.TemplateError as exc:  # templates raise on role orders they do not accept
        raise ApiError(400, f"The model's chat template refuses these messages: {exc}", param="messages") from exc
    # the template writes the special tokens itself; the tokenizer must not add another BOS
    ids = list(ctx.tokenizer(str(text), add_special_tokens=False)["input_ids"])
    return ids, conversation


def completion_prompt(ctx: ServeContext, body: CompletionRequest) -> tuple[list[int], str]:
    """Token ids of a plain prompt (text, a one-item list of text, or token ids) and its text."""
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        ids = [int(i) for i in prompt]
        vocab = len(ctx.tokenizer)
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ApiError(
                400, f"Prompt token ids {bad[:5]} are outside the vocabulary (0..{vocab - 1}).", param="prompt"
            )
        return ids, str(ctx.tokenizer.decode(ids))
    text = prompt if isinstance(prompt, str) else str(prompt[0])
    ids = list(ctx.tokenizer(text, add_special_tokens=True)["input_ids"])
    if not ids:
        raise ApiError(400, "The prompt is empty; send at least one token of text.", param="prompt")
    return ids, text


def token_budget(ctx: ServeContext, prompt_tokens: int, requested: int | None, param: str = "max_tokens") -> int:
    """max_tokens for the request: what it asked for, or the default, checked against the limits
    and the room the prompt leaves in the context."""
    limits, context = ctx.limits, ctx.context_length
    if limits.max_prompt_tokens is not None and prompt_tokens > limits.max_prompt_tokens:
        raise ApiError(
            400,
            f"The prompt has {prompt_tokens} tokens; this server accepts at most {limits.max_prompt_tokens}. "
            "Shorten the messages.",
            code="context_length_exceeded",
            param="messages",
        )
    if prompt_tokens >= context:
        raise ApiError(
            400,
            f"The prompt has {prompt_tokens} tokens; the model's context is {context}, which leaves no room to "
            "answer. Shorten the messages.",
            code="context_length_exceeded",
            param="messages",
        )
    if requested is None:
        return min(limits.default_max_tokens, context - prompt_tokens)
    if requested > limits.max_tokens_cap:
        raise ApiError(400, f"{param}={requested} is over this server's cap of {limits.max_tokens_cap}.", param=param)
    if prompt_tokens + requested > context:
        raise ApiError(
            400,
            f"The prompt ({prompt_tokens} tokens) plus {param}={requested} exceeds the model's context of {context} "
            f"tokens; ask for at most {context - prompt_tokens}.",
            code="context_length_exceeded",
            param=param,
        )
    return requested
