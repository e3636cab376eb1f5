"""The request bodies the server accepts, in OpenAI's field names.

Fields OpenAI defines and this server does not implement (tools, logprobs, penalties...) are
ignored when absent or at their no-op value; `n` other than 1 and `logprobs`/`echo` asked for
are refused (400) rather than silently answered differently.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes at most 64 bits

Temperature = Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)]
TopP = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Tokens = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
StopString = Annotated[str, Field(min_length=1, max_length=256)]
Stop = StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)]
ModelName = Annotated[str, Field(min_length=1, max_length=256)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class _Sampled(_Body):
    """The sampling fields both endpoints share."""

    model: ModelName
    temperature: Temperature | None = None  # None: OpenAI's default, 1
    top_p: TopP | None = None
    max_tokens: Tokens | None = None  # None: the server's default_max_tokens, within the context
    stop: Stop | None = None
    seed: Seed | None = None
    n: int | None = None  # only 1 is served
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options is not None and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampled):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Tokens | None = None  # OpenAI's newer name for max_tokens; wins when both are set
    logprobs: bool | None = None


class CompletionRequest(_Sampled):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] | Annotated[list[int], Field(min_length=1)]
    logprobs: int | None = None
    echo: bool | None = None


class FeedbackRequest(_Body):
    id: Annotated[str, Field(min_length=1, max_length=200)]
    rating: Literal[1, -1]
    edited: str | None = None
