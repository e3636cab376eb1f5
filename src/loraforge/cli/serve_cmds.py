"""`loraforge serve`: the OpenAI-compatible server over a registry, one base and a tenants file."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer
from rich.console import Console

if TYPE_CHECKING:
    from loraforge.serve.server import BuiltServer, DtypeChoice, EngineKind

console = Console()


class EngineChoice(StrEnum):
    builtin = "builtin"
    peft = "peft"
    vllm = "vllm"


class DtypeOption(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


def serve_command(
    registry: Path | None = typer.Option(
        None, "--registry", help="Registry the adapters were published to (default $LORAFORGE_HOME/registry)."
    ),
    base: str = typer.Option(..., "--base", help="Base model: alias (smollm2-135m-instruct), model dir or .gguf."),
    tenants: Path = typer.Option(..., "--tenants", help="tenants.yaml: API key hashes and each tenant's adapters."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on (0: any free port)."),
    max_loaded: int = typer.Option(8, "--max-loaded", min=1, help="Verified adapters held in memory (LRU)."),
    pub: Path | None = typer.Option(
        None, "--pub", help="Public key (PEM): every adapter's model.sig must verify against it, else it is refused."
    ),
    engine: EngineChoice = typer.Option(
        EngineChoice.builtin,
        "--engine",
        help="builtin: continuous batching with mixed adapters in one forward; peft: one request at a time "
        "through PEFT set_adapter (the benchmark baseline); vllm: a vLLM server on loopback behind loraforge "
        "(make setup-vllm).",
    ),  # fmt: skip
    engine_url: str | None = typer.Option(
        None,
        "--engine-url",
        help="With --engine vllm: attach to this running vLLM (started with --enable-lora, --served-model-name "
        "base, VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; its --api-key in $LORAFORGE_VLLM_API_KEY) instead of "
        "starting one.",
    ),  # fmt: skip
    max_lora_rank: int = typer.Option(
        16, "--max-lora-rank", help="With --engine vllm: vLLM's LoRA buffer rank; adapters of a higher rank get 409."
    ),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="Where completions and feedback are kept (default $LORAFORGE_HOME/serve)."
    ),
    dtype: DtypeOption = typer.Option(
        DtypeOption.fp32,
        "--dtype",
        help="Base weights: fp32 (a batched answer equals the same request alone), bf16 (faster on CPUs with "
        "avx512_bf16/AMX and on GPUs; batched greedy answers may differ from alone by rounding), auto (bf16 "
        "where the hardware runs it fast).",
    ),  # fmt: skip
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        help="CPU threads for the engine's math (default: torch's, one per core). 1 on a CPU shared with other "
        "busy processes: threads that wait for a busy core stall every decode step.",
    ),  # fmt: skip
) -> None:
    """Serve the base and the registry's live adapters over an OpenAI-compatible HTTP API (chat and
    completions, streaming, per-tenant keys and adapters, feedback, /metrics) until Ctrl-C."""
    from loraforge.serve.server import ServeOptions, serve  # deferred: torch and transformers take seconds
    from loraforge.ship.registry import Registry

    options = ServeOptions(
        registry=registry if registry is not None else Registry.default().root,
        base=base, tenants=tenants, host=host, port=port, max_loaded=max_loaded,
        public_key=pub, engine=cast("EngineKind", engine.value), state_dir=state_dir,
        dtype=cast("DtypeChoice", dtype.value), threads=threads, engine_url=engine_url,
        max_lora_rank=max_lora_rank,
    )  # fmt: skip
    serve(options, on_listen=_announce)  # LoraforgeError (vLLM not installed among them): exit 2 with the fix


def _announce(url: str, built: BuiltServer) -> None:
    adapters = ", ".join(built.adapters) or "none live yet"
    console.print(
        f"loraforge serve: listening on {url} (base `{built.model_id}`, engine {built.engine}; adapters: {adapters})",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"try: curl {url}/health", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
