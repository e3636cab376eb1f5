"""The LLM judge: the prompt it is asked, how its reply is read, and the cached client.

Any OpenAI-compatible endpoint (eval.judge: `loraforge serve`, vLLM, a hosted API) is asked through
the official `openai` client at temperature 0. A reply is cached under the sha256 of everything
the request holds (endpoint, model, the full prompt with rubric, question, answer and scale,
max_tokens), so an answer judged once is never sent again; the cache keeps the raw reply and the
reader below parses it each time, so a better parser re-reads old replies without asking anew.
The prompt text is documented in docs/eval-gate.md#llm-judge; change both together.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import openai

from loraforge.config import JudgeSpec
from loraforge.errors import EvalError
from loraforge.files import loraforge_home, write_json_atomic

# bump with any change to the prompts below: it is part of a calibration's identity
PROMPT_VERSION = 1
CACHE_VERSION = 1
Kind = Literal["pass/fail", "1-5", "pairwise"]
NO_KEY = "no-key"  # the openai client needs some key; a local server without auth ignores it

_FORMAT = {
    "pass/fail": "Verdict: PASS` if the answer meets the rubric, or `Verdict: FAIL` if it does not",
    "1-5": "Score: N` where N is a whole number from 1 (fails the rubric) to 5 (meets it fully)",
}
SINGLE_SYSTEM = (
    "You are a strict grader. You grade one answer against a rubric. Judge only what the answer says, "
    "not its length or tone unless the rubric asks. Reply with one line and nothing else: `{format}."
)
PAIRWISE_SYSTEM = (
    "You are a strict grader. You compare two answers to the same request against a rubric. Judge only "
    "what the answers say, not their length or order. Reply with one line and nothing else: `Winner: A`, "
    "`Winner: B`, or `Winner: tie` when neither is better."
)


@dataclass(frozen=True)
class JudgeRequest:
    kind: Kind
    messages: tuple[tuple[str, str], ...]  # (role, content)

    def payload(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


def _blocks(rubric: str, request: str, reference: str) -> list[str]:
    parts = [f"Rubric:\n{rubric.strip()}", f"Request:\n{request.strip()}"]
    if reference.strip():
        parts.append(f"Reference answer (one good answer; others can be as good):\n{reference.strip()}")
    return parts


def single_request(
    kind: Literal["pass/fail", "1-5"], rubric: str, request: str, answer: str, reference: str = ""
) -> JudgeRequest:
    user = "\n\n".join([*_blocks(rubric, request, reference), f"Answer to grade:\n{answer.strip()}"])
    return JudgeRequest(kind, (("system", SINGLE_SYSTEM.format(format=_FORMAT[kind])), ("user", user)))


def pairwise_request(rubric: str, request: str, answer_a: str, answer_b: str, reference: str = "") -> JudgeRequest:
    answers = [f"Answer A:\n{answer_a.strip()}", f"Answer B:\n{answer_b.strip()}"]
    user = "\n\n".join([*_blocks(rubric, request, reference), *answers])
    return JudgeRequest("pairwise", (("system", PAIRWISE_SYSTEM), ("user", user)))


# --- reading a reply ---------------------------------------------------------------------------

_VALUE = {
    "pass/fail": re.compile(r"(?P<v>pass|fail)(?:ed|es)?", re.IGNORECASE),
    "1-5": re.compile(r"(?P<v>[1-5])(?:\s*(?:/|out of)\s*5)?", re.IGNORECASE),
    "pairwise": re.compile(r"(?:answer\s+)?(?P<v>a|b|tie)", re.IGNORECASE),
}
# "Score: 4", "**Verdict:** PASS", "- Winner = B": a labelled line, markdown around it allowed
_LABELLED = re.compile(
    r"^[\s*#>_-]*(?:score|verdict|winner|grade)[\s*_]*[:=](?P<value>.*)$", re.IGNORECASE | re.MULTILINE
)
_DECORATION = " \t\r\n*_`'\".!"
EXPECTED = {
    "pass/fail": "'Verdict: PASS' or 'Verdict: FAIL' line",
    "1-5": "'Score: N' line with N from 1 to 5",
    "pairwise": "'Winner: A', 'Winner: B' or 'Winner: tie' line",
}
REPLY_CHARS = 120  # a reply quoted in an error is cut to this


@dataclass(frozen=True)
class Reading:
    """A reply read on its scale: `label` ("pass"/"fail", "1".."5", "A"/"B"/"tie") or why not."""

    label: str | None
    error: str = ""


def _value(kind: Kind, text: str) -> str | None:
    matched = _VALUE[kind].fullmatch(text.strip(_DECORATION))
    if matched is None:
        return None
    value = matched.group("v")
    return value.upper() if kind == "pairwise" and value.lower() != "tie" else value.lower()


def quote(reply: str) -> str:
    flat = " ".join(reply.split())
    return repr(flat[:REPLY_CHARS] + ("..." if len(flat) > REPLY_CHARS else ""))


def read_reply(kind: Kind, reply: str) -> Reading:
    """The judge's label: from its labelled lines ("Score: 4"), which must agree, else from a reply
    that is the bare value ("4", "PASS", "B"); anything else is an error, never a guess."""
    labelled = [m.group("value") for m in _LABELLED.finditer(reply)]
    if labelled:
        values = [_value(kind, text) for text in labelled]
        if any(v is None for v in values):
            bad = next(text for text, v in zip(labelled, values, strict=True) if v is None)
            return Reading(None, f"reply {quote(reply)}: {bad.strip()!r} is off the scale; expected a {EXPECTED[kind]}")
        if len(set(values)) > 1:
            return Reading(None, f"reply {quote(reply)}: conflicting values {', '.join(map(str, values))}")
        return Reading(values[0])
    bare = _value(kind, reply)
    if bare is not None:
        return Reading(bare)
    return Reading(None, f"reply {quote(reply)} has no {EXPECTED[kind]}")


# --- asking ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    request: JudgeRequest
    reply: str
    cached: bool

    @property
    def reading(self) -> Reading:
        return read_reply(self.request.kind, self.reply)


def cache_root(spec: JudgeSpec) -> Path:
    return spec.cache_dir if spec.cache_dir is not None else loraforge_home() / "judge-cache"


def api_key(spec: JudgeSpec) -> str:
    if spec.api_key_env is None:
        return NO_KEY
    key = os.environ.get(spec.api_key_env, "")
    if not key:
        raise EvalError(
            f"eval.judge.api_key_env: the environment variable {spec.api_key_env} is not set; export it with the "
            "endpoint's key, or unset eval.judge.api_key_env for a server without one"
        )
    return key


class Judge:
    """The endpoint in eval.judge, asked through a reply cache; `asked` counts requests actually sent."""

    def __init__(self, spec: JudgeSpec) -> None:
        if spec.base_url is None or spec.model is None:
            raise EvalError(
                "a judge check needs an endpoint: set eval.judge.base_url and eval.judge.model "
                "(docs/eval-gate.md#llm-judge), or remove the judge checks"
            )
        self.spec, self.base_url, self.model = spec, spec.base_url.rstrip("/"), spec.model
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key(spec), timeout=spec.timeout_s)
        self.asked = 0
        self.from_cache = 0
        self._lock = threading.Lock()

    def identity(self) -> dict[str, Any]:
        """What a calibration holds for: the same endpoint, model and prompt."""
        return {"base_url": self.base_url, "model": self.model, "prompt_version": PROMPT_VERSION}

    def cache_key(self, request: JudgeRequest) -> str:
        payload = {
            "version": CACHE_VERSION,
            "base_url": self.base_url,
            "model": self.model,
            "messages": request.payload(),
            "max_tokens": self.spec.max_tokens,
            "temperature": 0,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def ask_all(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
        """Judgements in request order; identical requests are asked once, at most
        eval.judge.concurrency at a time. An endpoint that fails raises EvalError."""
        unique = list(dict.fromkeys(requests))
        with ThreadPoolExecutor(max_workers=self.spec.concurrency) as pool:
            answered = dict(zip(unique, pool.map(self.ask, unique), strict=True))
        return [answered[r] for r in requests]

    def ask(self, request: JudgeRequest) -> Judgement:
        key = self.cache_key(request)
        path = cache_root(self.spec) / key[:2] / f"{key}.json"
        try:
            reply = str(json.loads(path.read_text(encoding="utf-8"))["reply"])
        except (OSError, ValueError, KeyError, TypeError):
            reply = None
        if reply is not None:
            with self._lock:
                self.from_cache += 1
            return Judgement(request, reply, cached=True)
        reply = self._complete(request)
        with self._lock:
            self.asked += 1
        write_json_atomic(
            path, {"model": self.model, "base_url": self.base_url, "messages": request.payload(), "reply": reply}
        )
        return Judgement(request, reply, cached=False)

    def _complete(self, request: JudgeRequest) -> str:
        where = f"eval.judge (base_url={self.base_url}, model={self.model})"
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=request.payload(),  # type: ignore[arg-type]
                temperature=0,
                max_tokens=self.spec.max_tokens,
            )
        except openai.APIConnectionError as exc:
            raise EvalError(f"{where}: cannot reach the endpoint ({exc}); start the server or fix base_url") from exc
        except openai.AuthenticationError as exc:
            how = f"the key in ${self.spec.api_key_env}" if self.spec.api_key_env else "no key (api_key_env is unset)"
            raise EvalError(f"{where}: the endpoint refused {how} (401); set a key it accepts") from exc
        except openai.NotFoundError as exc:
            raise EvalError(
                f"{where}: not found (404: {exc.message}); name a model the endpoint lists at /models"
            ) from exc
        except openai.APIStatusError as exc:
            raise EvalError(f"{where}: HTTP {exc.status_code} ({exc.message}); check the endpoint and model") from exc
        if not response.choices:
            raise EvalError(f"{where}: the endpoint answered with no choices; is it OpenAI-compatible?")
        return response.choices[0].message.content or ""
