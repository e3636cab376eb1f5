"""The built-in serving engine: our own Llama decoder over the HF weights, continuous batching,
and mixed adapters in one forward (a grouped LoRA matmul over stacked adapter slots).

Read in this order: `decoder` (the forward), `kv_cache` (rows and positions), `lora_slots` (the
stacked adapters and the per-row update), `sampling`, `scheduler` (join, prefill, decode, leave),
`engine` (the worker thread and the asyncio side). Design and figures: docs/serve-engine.md.
"""

from loraforge.serve.builtin.engine import BuiltinEngine, BuiltinStats

__all__ = ["BuiltinEngine", "BuiltinStats"]
