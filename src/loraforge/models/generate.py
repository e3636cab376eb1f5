"""Batched chat generation, greedy or sampled (for probe building), in a given chat template.

`chat_template` is the Jinja text the model was trained with (data.template, else the tokenizer's);
None renders with the tokenizer's own."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from loraforge.models.forward import causal_lm_of, head_at_labels, summed_nll_per_row

Message = dict[str, str]
Hopeless = Callable[[str], bool] | None  # per row: True once its unfinished answer can no longer pass


class GiveUp(StoppingCriteria):
    """Ends a row once `hopeless[row]` says its answer so far can no longer pass, and not before
    `after` new tokens, so a report still shows how the answer began. A batch stops when all of
    its rows have ended, so a base that rambles to max_new_tokens on every golden row stops early."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_len: int, hopeless: Sequence[Hopeless], after: int):
        self.tokenizer, self.prompt_len, self.hopeless, self.after = tokenizer, prompt_len, list(hopeless), after
        self.ended = [False] * len(self.hopeless)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_len :]
        if new.shape[1] >= self.after:
            for row, test in enumerate(self.hopeless):
                if test is not None and not self.ended[row]:
                    self.ended[row] = test(str(self.tokenizer.decode(new[row], skip_special_tokens=True)))
        return torch.tensor(self.ended, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def give_up(
    tokenizer: PreTrainedTokenizerBase, prompt_len: int, hopeless: Sequence[Hopeless] | None, after: int | None
) -> dict[str, object]:
    """generate() kwargs that end hopeless rows early; none when there is nothing to test."""
    if after is None or hopeless is None or all(test is None for test in hopeless):
        return {}
    return {"stopping_criteria": StoppingCriteriaList([GiveUp(tokenizer, prompt_len, hopeless, after)])}


def generate_chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Message]],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    hopeless: Sequence[Hopeless] | None = None,
    give_up_after: int | None = None,
    chat_template: str | None = None,
) -> list[str]:
    """Greedy answers for each conversation (its last turn is the user's), in input order. With
    `hopeless` (one test per conversation) and `give_up_after`, a row ends once its test is True."""
    batches = _generate(
        model, tokenizer, conversations, batch_size, False, hopeless, give_up_after, chat_template,
        max_new_tokens=max_new_tokens,
    )  # fmt: skip
    return [text for batch in batches for text, _ in batch]


def generate_chat_finished(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Message]],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    progress: bool = False,
    chat_template: str | None = None,
) -> list[tuple[str, bool]]:
    """(answer, finished) per conversation: finished is False when the answer hit max_new_tokens
    before an end-of-turn token, so it is cut off mid-thought."""
    batches = _generate(
        model, tokenizer, conversations, batch_size, progress, chat_template=chat_template,
        max_new_tokens=max_new_tokens,
    )  # fmt: skip
    return [answer for batch in batches for answer in batch]


def sample_chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Message]],
    *,
    samples: int,
    temperature: float,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
    chat_template: str | None = None,
) -> list[list[str]]:
    """`samples` answers per conversation drawn at `temperature` (seeded), in input order.

    `batch_size` counts sequences: each batch holds batch_size // samples conversations."""
    torch.manual_seed(seed)
    per_batch = max(1, batch_size // samples)
    batches = _generate(
        model, tokenizer, conversations, per_batch, progress, chat_template=chat_template,
        max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
        num_return_sequences=samples,
    )  # fmt: skip
    flat = [text for batch in batches for text, _ in batch]
    return [flat[i : i + samples] for i in range(0, len(flat), samples)]


def _generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Message]],
    batch_size: int,
    progress: bool,
    hopeless: Sequence[Hopeless] | None = None,
    give_up_after: int | None = None,
    chat_template: str | None = None,
    **generate_kwargs: object,
) -> list[list[tuple[str, bool]]]:
    """Per batch of conversations, (answer, finished) per generated sequence, in input order."""
    results: list[list[tuple[str, bool]]] = []
    stop_ids = _stop_ids(model, tokenizer)
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only: pad on the left so every row ends at its prompt
    starts = range(0, len(conversations), batch_size)
    try:
        for start in tqdm(starts, desc="generate", unit="batch", disable=not progress):
            chunk = conversations[start : start + batch_size]
            texts = [render_prompt(tokenizer, c, chat_template) for c in chunk]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(model.device)
            width = enc["input_ids"].shape[1]
            tests = hopeless[start : start + batch_size] if hopeless is not None else None
            with torch.no_grad():
                out = model.generate(  # type: ignore[operator]
                    **enc,
                    pad_token_id=tokenizer.pad_token_id,
                    **{"do_sample": False, **give_up(tokenizer, width, tests, give_up_after), **generate_kwargs},
                )
            new_tokens = out[:, width:]
            finished = torch.isin(new_tokens, torch.tensor(stop_ids, device=new_tokens.device)).any(dim=1)
            texts_out = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            results.append([(t.strip(), bool(f)) for t, f in zip(texts_out, finished.tolist(), strict=True)])
    finally:
        tokenizer.padding_side = previous_side
    return results


def render_prompt(
    tokenizer: PreTrainedTokenizerBase, conversation: Sequence[Message], chat_template: str | None = None
) -> str:
    """The generation prompt of a conversation in `chat_template` (None: the tokenizer's own)."""
    text = tokenizer.apply_chat_template(
        list(conversation), tokenize=False, add_generation_prompt=True, chat_template=chat_template
    )
    return str(text)


def _stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end generation: the generation config's eos ids (one or a list) and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids = [*ids, tokenizer.eos_token_id]
    return sorted({int(i) for i in ids if i is not None})


# A batch's prompts share a prefix (the system prompt, the template's header) at least this long
# before it is encoded once and its KV cache repeated over the batch, rather than once per row.
MIN_SHARED_PREFIX = 16


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving each prompt at least one token of its own (generation
    feeds the prompt's last token itself); 0 under MIN_SHARED_PREFIX or for a single prompt."""
    if len(prompts) < 2:
        return 0
    limit = min(len(p) for p in prompts) - 1
    first = prompts[0]
    length = 0
    while length < limit and all(p[length] == first[length] for p in prompts):
        length += 1
    return length if length >= MIN_SHARED_PREFIX else 0


def score_then_generate(
    model: PeftModel | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    continuation_labels: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    ignore_index: int,
    hopeless: Sequence[Hopeless] | None = None,
    give_up_after: int | None = None,
) -> tuple[list[str], list[tuple[float, int]]]:
    """One forward over prompt + reference gives the reference's token NLL and, cropped to the
    prompt, the KV cache greedy generation starts from: the prompt is encoded once, not twice.

    The prefix all prompts share (`shared_prefix_length`: a system prompt, say) is encoded once and
    its cache repeated over the rows. Rows are laid out [shared prefix | pad | rest of the prompt |
    continuation | right pad] so every prompt ends in the same column; positions count real tokens
    only, as generate() computes them, so each row sees what it would see alone. Returns the answers
    and, per row, (summed NLL of the labelled continuation tokens, their count). `hopeless` and
    `give_up_after` end rows that can no longer pass early (GiveUp).
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    shared = shared_prefix_length(prompts)
    prefix = list(prompts[0][:shared])
    rests = [list(p[shared:]) for p in prompts]
    width_r, width_c = max(len(r) for r in rests), max(len(c) for c in continuations)
    device = next(model.parameters()).device
    ids, mask, labels = [], [], []
    for rest, cont, cont_labels in zip(rests, continuations, continuation_labels, strict=True):
        left, right = width_r - len(rest), width_c - len(cont)
        ids.append(prefix + [pad_id] * left + rest + list(cont) + [pad_id] * right)
        mask.append([1] * shared + [0] * left + [1] * (len(rest) + len(cont)) + [0] * right)
        labels.append([ignore_index] * (shared + left + len(rest)) + list(cont_labels) + [ignore_index] * right)
    input_ids = torch.tensor(ids, device=device)
    attention_mask = torch.tensor(mask, device=device)
    label_ids = torch.tensor(labels, device=device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    decoder = causal_lm_of(model).get_decoder()
    with torch.no_grad():
        cache = None
        if shared:
            cache = decoder(input_ids=input_ids[:1, :shared], use_cache=True).past_key_values
            cache.batch_repeat_interleave(len(rests))
        out = decoder(
            input_ids=input_ids[:, shared:],
            attention_mask=attention_mask,
            position_ids=position_ids[:, shared:],
            past_key_values=cache,
            use_cache=True,
        )
        logits, targets, keep = head_at_labels(
            model, out.last_hidden_state, label_ids[:, shared:], ignore_index=ignore_index
        )
        scores = summed_nll_per_row(logits, targets, keep)
        cache = out.past_key_values
        # drop the continuation from the cache; generate() feeds the prompt's last token itself
        prompt_end = shared + width_r
        cache.crop(-(cache.get_seq_length() - (prompt_end - 1)))
        generated = model.generate(  # type: ignore[operator]
            input_ids=input_ids[:, :prompt_end],
            attention_mask=attention_mask[:, :prompt_end],
            past_key_values=cache,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            **give_up(tokenizer, prompt_end, hopeless, give_up_after),
        )
    answers = tokenizer.batch_decode(generated[:, prompt_end:], skip_special_tokens=True)
    return [a.strip() for a in answers], scores
