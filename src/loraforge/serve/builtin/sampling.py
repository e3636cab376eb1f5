"""Per-row token choice: greedy rows in one argmax, sampled rows each from their own generator.

A sampled row draws exactly one number from its request's `torch.Generator` per token, whatever
else is in the batch, so a seeded request gives the same tokens alone or batched. Sampling runs on
the CPU (logits copied over for the sampled rows only), so a seed means the same on any device.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch

from loraforge.serve.engine import Sampling


def generator_for(sampling: Sampling) -> torch.Generator | None:
    """The request's generator; None for greedy. An unseeded request gets a fresh random seed
    (torch.Generator()'s default seed is a constant: every unseeded request would sample alike)."""
    if is_greedy(sampling):
        return None
    seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
    return torch.Generator().manual_seed(seed)


def is_greedy(sampling: Sampling) -> bool:
    return sampling.temperature <= 0 or sampling.top_p <= 0


def pick_tokens(
    logits: torch.Tensor, samplings: Sequence[Sampling], generators: Sequence[torch.Generator | None]
) -> list[int]:
    """logits: (rows, vocab) -> one token id per row."""
    tokens = torch.argmax(logits, dim=-1).tolist()
    for row, (sampling, generator) in enumerate(zip(samplings, generators, strict=True)):
        if generator is not None:
            tokens[row] = sample(logits[row], sampling, generator)
    return [int(t) for t in tokens]


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """Nucleus sampling at `temperature`: keep the most likely tokens whose mass before them is
    under top_p (the top token always stays), renormalise, draw once."""
    # float64, shifted so the top logit is 0: a tiny temperature the API accepts (1e-300) is 0 in
    # float32 and gave 0/0 = nan; in float64 the others go to -inf and the top token keeps it all
    logits = logits.double().cpu()
    probs = torch.softmax((logits - logits.max()) / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        ranked, order = torch.sort(probs, descending=True)
        mass_before = torch.cumsum(ranked, dim=-1) - ranked
        ranked[mass_before >= sampling.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, ranked)
    return int(torch.multinomial(probs, 1, generator=generator).item())
