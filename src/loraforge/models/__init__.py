"""Base models: resolve a spec (alias, HF dir, .gguf), load it, fingerprint it, attach LoRA."""

import logging
import warnings

# bitsandbytes (imported by PEFT) warns on every start that the optional `kernels` package, which
# fetches a CPU 4-bit kernel from a hub, is missing. Nothing may download here, and its built-in
# fallback is what QLoRA uses on CPU, so the warning is noise for every command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# PEFT 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` on every adapter attach
# and load; the FutureWarning is addressed to PEFT, not to a loraforge user.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

from loraforge.models.adapter import (
    MANIFEST_NAME,
    can_merge,
    load_adapter,
    merged_adapter,
    read_manifest,
    save_adapter,
    write_manifest,
)
from loraforge.models.base import (
    LoadedBase,
    base_context_length,
    context_length,
    load_base,
    load_tokenizer,
    public_base,
    resolve_base,
)
from loraforge.models.fingerprint import base_fingerprint, tokenizer_sha256
from loraforge.models.lora import attach_lora, build_lora_config, linear_module_names, resolve_targets
from loraforge.models.manifest import (
    MANIFEST_FORMAT,
    manifest_chat_template,
    utc_timestamp,
    validate_manifest,
)

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "LoadedBase",
    "attach_lora",
    "base_context_length",
    "base_fingerprint",
    "build_lora_config",
    "can_merge",
    "context_length",
    "linear_module_names",
    "manifest_chat_template",
    "load_adapter",
    "load_base",
    "load_tokenizer",
    "merged_adapter",
    "public_base",
    "read_manifest",
    "resolve_base",
    "resolve_targets",
    "save_adapter",
    "tokenizer_sha256",
    "utc_timestamp",
    "validate_manifest",
    "write_manifest",
]
