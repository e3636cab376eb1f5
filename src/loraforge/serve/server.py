"""`serve(options)`: load the base, build the adapter store, tenants, feedback store, engine and
app, and run uvicorn on a socket bound here (so a port of 0 works and the printed address is true).

Everything a flag names is checked before the base loads: a wrong path fails in a second with
the flag in the message, not after a model load.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import uvicorn
import uvicorn.config
from fastapi import FastAPI

from loraforge.errors import LoraforgeError
from loraforge.models import LoadedBase, context_length, load_base
from loraforge.models.base import fast_bf16_available, resolve_base
from loraforge.serve.adapters import AdapterStore, ServedBase, check_public_key
from loraforge.serve.builtin import BuiltinEngine
from loraforge.serve.engine import Engine
from loraforge.serve.feedback import FeedbackStore, default_state_dir, feedback_path
from loraforge.serve.http import Limits, build_app
from loraforge.serve.peft_engine import PeftEngine
from loraforge.serve.tenants import Tenants
from loraforge.serve.vllm import DEFAULT_MAX_LORA_RANK, VllmEngine, VllmSettings, adapter_refusal
from loraforge.ship.export_vllm import VLLM_MAX_LORA_RANKS
from loraforge.ship.registry import Registry
from loraforge.ship.vllm_run import VLLM_PYTHON_ENV, vllm_python

EngineKind = Literal["builtin", "peft", "vllm"]
DtypeChoice = Literal["auto", "fp32", "bf16"]
# builtin: continuous batching with mixed adapters in one forward; peft is the benchmark baseline;
# vllm: a vLLM server behind loraforge (docs/serve.md#the-vllm-engine)
DEFAULT_ENGINE: EngineKind = "builtin"

log = logging.getLogger("loraforge.serve")
VLLM_KEY_ENV = "LORAFORGE_VLLM_API_KEY"  # with --engine-url: the --api-key that vLLM was started with


@dataclass(frozen=True)
class ServeOptions:
    """What `loraforge serve` takes; every field is a flag of the same name."""

    registry: Path
    base: str
    tenants: Path
    host: str = "127.0.0.1"  # loopback: put a TLS proxy in front before opening it wider
    port: int = 8000
    max_loaded: int = 8  # verified adapters held in memory (the store's LRU and the engine's slots)
    public_key: Path | None = None  # with it, every adapter's model.sig must verify against this key
    engine: EngineKind = DEFAULT_ENGINE
    state_dir: Path | None = None  # feedback.sqlite3 lives here; default $LORAFORGE_HOME/serve
    # fp32: continuous batching's contract (a batched greedy answer equals it alone) holds; in bf16 a
    # row's rounding depends on the batch's shape, and on SmolLM2 5 of 12 mixed answers differed
    dtype: DtypeChoice = "fp32"
    threads: int | None = None  # torch's intra-op threads; None: torch's default
    limits: Limits = field(default_factory=Limits)
    engine_url: str | None = None  # --engine vllm: attach to this vLLM instead of starting one
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK  # --engine vllm: adapters of a higher rank are refused (409)


@dataclass
class BuiltServer:
    app: FastAPI
    feedback: FeedbackStore
    model_id: str
    engine: str
    adapters: list[str]


def _option(field_name: str, value: object) -> str:
    """`max_loaded=0 (--max-loaded)`: the ServeOptions field a Python caller sets and the flag a CLI user passes."""
    return f"{field_name}={value!r} (--{field_name.replace('_', '-')})"


def check_options(options: ServeOptions) -> None:
    """Every problem with the flags at once, before anything heavy loads."""
    problems = []
    if not options.registry.is_dir():
        problems.append(
            f"{_option('registry', options.registry)}: no such directory; pass the registry adapters were published to"
        )
    if not options.tenants.is_file():
        problems.append(
            f"{_option('tenants', options.tenants)}: no such file; create it with `loraforge tenants add NAME`"
        )
    if not 0 <= options.port <= 65535:
        problems.append(f"{_option('port', options.port)}: must be 0..65535 (0: any free port)")
    if options.max_loaded < 1:
        problems.append(f"{_option('max_loaded', options.max_loaded)}: must be at least 1")
    if options.threads is not None and options.threads < 1:
        problems.append(f"{_option('threads', options.threads)}: must be at least 1")
    if options.engine_url is not None and options.engine != "vllm":
        problems.append(
            f"{_option('engine_url', options.engine_url)}: only --engine vllm (engine='vllm') attaches to a "
            "server; add it"
        )
    if options.engine_url is not None and not options.engine_url.startswith(("http://", "https://")):
        problems.append(f"{_option('engine_url', options.engine_url)}: must be an http:// or https:// URL")
    if options.max_lora_rank not in VLLM_MAX_LORA_RANKS:
        allowed = ", ".join(str(v) for v in VLLM_MAX_LORA_RANKS)
        problems.append(f"{_option('max_lora_rank', options.max_lora_rank)}: vLLM accepts only {allowed}")
    if problems:
        raise LoraforgeError("loraforge serve: " + "; ".join(problems))
    if options.public_key is not None:
        check_public_key(options.public_key)
    if options.engine == "vllm" and options.engine_url is None and found_vllm_python() is None:
        raise VllmMissing(
            f"--engine vllm: vLLM is not installed; run `make setup-vllm` (its own venv, .venv-vllm), set "
            f"{VLLM_PYTHON_ENV} to a python that imports vllm, or attach to a running vLLM with --engine-url"
        )


def torch_dtype(choice: DtypeChoice, device: str) -> torch.dtype:
    if choice == "fp32":
        return torch.float32
    if choice == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if fast_bf16_available(device) else torch.float32


def build_server(options: ServeOptions) -> BuiltServer:
    """Load and wire everything `serve` runs; the app is ready for uvicorn."""
    check_options(options)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    tenants = Tenants.load(options.tenants)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_base(options.base, dtype=torch_dtype(options.dtype, device), device=device)
    served = ServedBase.from_loaded(loaded)
    vllm = vllm_settings(options, loaded) if options.engine == "vllm" else None
    store = AdapterStore(
        Registry(options.registry), served, public_key=options.public_key, max_loaded=options.max_loaded, log=log,
        accept=adapter_refusal(options.max_lora_rank) if vllm is not None else None,
    )  # fmt: skip
    engine = make_engine(options.engine, loaded.model, options.max_loaded, loaded.dtype, vllm=vllm)
    feedback = FeedbackStore(feedback_path(options.state_dir or default_state_dir()))
    app = build_app(
        engine, store, tenants, served, loaded.tokenizer,
        feedback=feedback, limits=options.limits, context_length=context_length(loaded.model.config),
        stop_token_ids=stop_token_ids(loaded.model, loaded.tokenizer),
    )  # fmt: skip
    return BuiltServer(app, feedback, served.model_id, engine.name, store.names())


def make_engine(
    kind: EngineKind, model: Any, max_loaded: int, dtype: torch.dtype, *, vllm: VllmSettings | None = None
) -> Engine:
    if kind == "peft":
        return PeftEngine(model, max_loaded=max_loaded)
    if kind == "vllm":
        if vllm is None:
            raise LoraforgeError("make_engine('vllm'): pass vllm=VllmSettings(...) (serve.server.vllm_settings)")
        return VllmEngine(vllm, max_loaded=max_loaded)
    return BuiltinEngine(model, max_loaded=max_loaded, dtype=dtype)


class VllmMissing(LoraforgeError):
    """--engine vllm without a python that imports vLLM (the CLI exits 2 with the fix)."""


def vllm_settings(options: ServeOptions, loaded: LoadedBase) -> VllmSettings:
    """vLLM serves the same weights loraforge verified adapters against: the base's HF directory
    (a GGUF base's converted safetensors), in the dtype loraforge chose, with its context length."""
    return VllmSettings(
        base_dir=resolve_base(options.base).absolute(),
        dtype="bfloat16" if loaded.dtype == torch.bfloat16 else "float32",
        max_loras=options.max_loaded,
        max_model_len=context_length(loaded.model.config),
        log_path=(options.state_dir or default_state_dir()) / "vllm.log",
        max_lora_rank=options.max_lora_rank,
        url=options.engine_url,
        api_key=os.environ.get(VLLM_KEY_ENV),
        python=found_vllm_python() if options.engine_url is None else None,
    )


def found_vllm_python() -> Path | None:
    """ship.vllm_run.vllm_python, probed once per setting: the probe imports vLLM (seconds)."""
    return _probe_vllm_python(os.environ.get(VLLM_PYTHON_ENV), os.getcwd())


@functools.cache
def _probe_vllm_python(configured: str | None, cwd: str) -> Path | None:
    found = vllm_python()  # reads the same environment and directory the cache is keyed on
    return None if found is None else found.absolute()


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The generation config's eos ids (one or a list) and the tokenizer's: each ends a turn."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({int(i) for i in [*ids, tokenizer.eos_token_id] if i is not None})


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LoraforgeError(
            f"loraforge serve: cannot listen on {host}:{port} ({exc.strerror}); pick another --port or --host"
        ) from exc
    sock.listen(2048)
    return sock


def log_config() -> dict[str, Any]:
    """uvicorn's logging, plus loraforge's own loggers (adapter refusals and their reasons) on stderr."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["loraforge"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def serve(options: ServeOptions, on_listen: Callable[[str, BuiltServer], None] | None = None) -> None:
    """Run the server until interrupted; `on_listen(url, built)` is called once the socket is bound."""
    built = build_server(options)
    sock = bind(options.host, options.port)
    try:
        host, port = sock.getsockname()[:2]
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        if on_listen is not None:
            on_listen(url, built)
        config = uvicorn.Config(built.app, log_config=log_config(), lifespan="on", timeout_graceful_shutdown=10)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        built.feedback.close()
