"""`loraforge serve` as a user runs it: a real process on a free loopback port, the official openai
client against it, the reason for a refused adapter in its log, bad flags as one clear error."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from serve_http_support import publish_live
from ship_adapters import make_adapter

import loraforge
from loraforge.cli import main
from loraforge.models import MANIFEST_NAME
from loraforge.serve.tenants import add_tenant
from loraforge.ship.registry import Registry

OTHER_BASE = "sha256:" + "f" * 64  # a fingerprint no base has


@dataclass
class Process:
    proc: subprocess.Popen[str]
    url: str
    key: str
    stderr: list[str]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _lines(stream: object, sink: queue.Queue[str] | list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.put(line) if isinstance(sink, queue.Queue) else sink.append(line)


@pytest.fixture(scope="module")
def server(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    work = tmp_path_factory.mktemp("serve-cli")
    registry = Registry(work / "registry")
    publish_live(registry, make_adapter(tiny_base_dir, work / "alpha", r=4, b_std=0.1), "alpha")
    wrong = make_adapter(tiny_base_dir, work / "wrong", r=4, b_std=0.1)
    manifest = json.loads((wrong / MANIFEST_NAME).read_text())
    manifest["base"]["fingerprint"] = OTHER_BASE  # as if trained on another base
    (wrong / MANIFEST_NAME).write_text(json.dumps(manifest))
    publish_live(registry, wrong, "wrong")
    key = add_tenant(work / "tenants.yaml", "acme", ["alpha", "wrong"])
    argv = [sys.executable, "-m", "loraforge", "serve", "--registry", str(registry.root), "--base", str(tiny_base_dir)]
    argv += ["--tenants", str(work / "tenants.yaml"), "--port", "0", "--state-dir", str(work / "state")]
    src = str(Path(loraforge.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": src, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "300"}
    # Ctrl-C's default action, as in a terminal: a job started in the background by a shell (CI's
    # runner may be one) inherits SIGINT ignored, and uvicorn re-raises the signal into that handler
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint
    )
    out: queue.Queue[str] = queue.Queue()
    err: list[str] = []
    threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True).start()
    threading.Thread(target=_lines, args=(proc.stderr, err), daemon=True).start()
    url = None
    deadline = time.monotonic() + 300  # start-up on a loaded 2-core machine, not a measurement
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            found = re.search(r"listening on (http://\S+)", out.get(timeout=1))
        except queue.Empty:
            continue
        url = found.group(1) if found else None
    if url is None:
        proc.kill()  # a failed start leaves no server behind
        proc.wait(timeout=60)
    assert url is not None, "the server did not print its address: " + "".join(err)[-2000:]
    yield Process(proc, url, key, err)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def _client(server: Process) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0, timeout=120)


def test_the_served_adapter_answers_the_openai_client(server: Process) -> None:
    answer = _client(server).chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "hello"}], temperature=0, max_tokens=8
    )
    assert answer.model == "alpha@1"
    assert answer.usage is not None and answer.usage.completion_tokens >= 1


def test_an_adapter_for_another_base_is_refused_with_the_reason_in_the_log(server: Process) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        _client(server).chat.completions.create(
            model="wrong", messages=[{"role": "user", "content": "hello"}], temperature=0, max_tokens=8
        )
    assert info.value.status_code == 409
    assert "adapter_refused" in info.value.response.text
    deadline = time.monotonic() + 10  # the log line travels through a pipe
    while not any(OTHER_BASE in line for line in server.stderr) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [line for line in server.stderr if "refused" in line and OTHER_BASE in line]


def test_interrupt_shuts_the_server_down_gracefully(server: Process) -> None:
    assert server.proc.poll() is None
    server.proc.send_signal(signal.SIGINT)
    # 128 + SIGINT, the shell's code for "interrupted": uvicorn re-raises the signal once shut down
    assert server.proc.wait(timeout=60) == 128 + signal.SIGINT
    assert any("Application shutdown complete" in line for line in server.stderr)
    assert not [line for line in server.stderr if "Traceback" in line]


def test_missing_registry_and_tenants_are_one_error_naming_both_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--registry", str(tmp_path / "nope"), "--base", "x", "--tenants", str(tmp_path / "t.yaml")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert "--registry" in err and "--tenants" in err and "loraforge tenants add" in err
    assert "Traceback" not in err


def test_engine_vllm_without_vllm_is_exit_2_naming_make_setup_vllm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAFORGE_VLLM_PYTHON", str(tmp_path / "no-python"))
    (tmp_path / "registry").mkdir()
    add_tenant(tmp_path / "t.yaml", "acme", [])
    argv = ["serve", "--registry", str(tmp_path / "registry"), "--base", "x", "--tenants", str(tmp_path / "t.yaml")]
    code = main([*argv, "--engine", "vllm"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert "make setup-vllm" in err and "LORAFORGE_VLLM_PYTHON" in err
    assert "Traceback" not in err


def test_engine_url_needs_engine_vllm_and_a_valid_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "registry").mkdir()
    add_tenant(tmp_path / "t.yaml", "acme", [])
    argv = ["serve", "--registry", str(tmp_path / "registry"), "--base", "x", "--tenants", str(tmp_path / "t.yaml")]
    code = main([*argv, "--engine-url", "http://127.0.0.1:9", "--max-lora-rank", "20"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert "engine_url='http://127.0.0.1:9' (--engine-url)" in err and "--engine vllm" in err
    assert "max_lora_rank=20 (--max-lora-rank)" in err
