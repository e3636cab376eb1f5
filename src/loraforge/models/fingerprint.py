"""A base fingerprint: one sha256 over weights, tokenizer and chat template.

Computed from the safetensors files on disk (names, shapes, dtypes, bytes in name order), so it
is the same whatever dtype the model is later loaded in, and the same on every machine.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from loraforge.errors import ModelError
from loraforge.files import sha256_text, write_text_atomic

FINGERPRINT_VERSION = 1
# what reading a truncated or corrupt weights file raises: SafetensorError is not an OSError
UNREADABLE_WEIGHTS: tuple[type[Exception], ...] = (OSError, ValueError, SafetensorError)
_CHUNK_ELEMENTS = 1 << 24


def unreadable_weights(model_dir: Path) -> Path | None:
    """The first *.safetensors file in `model_dir` whose header cannot be read, if any."""
    for file in sorted(model_dir.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except UNREADABLE_WEIGHTS:
            return file
    return None


def weights_sha256(model_dir: Path) -> str:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{model_dir}: no *.safetensors weights to fingerprint; convert .bin weights first")
    where: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                where[name] = file
    digest = hashlib.sha256()
    for name in sorted(where):
        with safe_open(str(where[name]), framework="pt") as handle:
            tensor = handle.get_tensor(name)
        header = f"{name}|{tuple(tensor.shape)}|{str(tensor.dtype)}\n"
        digest.update(header.encode())
        flat = tensor.contiguous().reshape(-1)
        for start in range(0, flat.numel(), _CHUNK_ELEMENTS):
            digest.update(flat[start : start + _CHUNK_ELEMENTS].view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_sha256(model_dir: Path) -> str:
    """Hash of the tokenizer's files that define its behaviour (not incidental metadata)."""
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "special_tokens_map.json"):
        file = model_dir / name
        if file.is_file():
            digest.update(name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def base_fingerprint(model_dir: Path, chat_template: str | None, cache_dir: Path | None = None) -> str:
    """`sha256:<hex>` over weights + tokenizer + chat template; cached by file size and mtime."""
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(model_dir.iterdir()) if p.is_file()]
    key = hashlib.sha256(json.dumps([str(model_dir.resolve()), stamp, FINGERPRINT_VERSION]).encode()).hexdigest()
    cached = cache_dir / f"{key}.json" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        weights = json.loads(cached.read_text())["weights_sha256"]
    else:
        weights = weights_sha256(model_dir)
        if cached is not None:
            write_text_atomic(cached, json.dumps({"weights_sha256": weights, "model_dir": str(model_dir)}))
    parts = {
        "version": FINGERPRINT_VERSION,
        "weights": weights,
        "tokenizer": tokenizer_sha256(model_dir),
        "chat_template": sha256_text(chat_template),
    }
    return "sha256:" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
