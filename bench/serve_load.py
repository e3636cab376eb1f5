"""Load test of `loraforge serve` over loopback: correctness under concurrency, then N clients for S seconds.

    PYTHONPATH=src python bench/serve_load.py                                  # SmolLM2, 60 s, 16 clients
    PYTHONPATH=src python bench/serve_load.py --base tiny --seconds 10         # the test base, a smoke run

A real `loraforge serve` process (the CLI, as a user starts it) with a registry of `--adapters`
real PEFT adapters (rank `--rank`, random non-zero B, made the way the serve tests make them) and
two tenants, each allowed half of the adapters and the base. Then:

1. Correctness: 12 mixed requests (both tenants, every adapter and the base, half streamed), each
   greedy answer asked alone, then all 12 at once with staggered arrivals: every answer must equal
   its answer alone.
2. Load: `--clients` threads, each with its own openai client, loop until `--seconds` have passed:
   a random allowed model, greedy or seeded sampling, 8 to `--max-tokens` tokens, every other
   request streamed, one in ten followed by a feedback post. Any exception, any non-2xx, and any
   answer with no tokens counts as an error.
3. Memory: `--warmup` seconds of the same load first (adapters load, the KV cache grows to the
   batch and lengths this load reaches, allocator pools fill), then the measured `--seconds` with
   the server's RSS sampled every 0.5 s; growth is the median of its last 10 s minus the median of
   its first 10 s. It passes when growth is under max(2% of the warm RSS, 32 MiB).

The table goes to stdout (and `--json`); exit 1 when a correctness check, an error or memory growth fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))  # make_adapter: real PEFT adapters with a schema-valid manifest

from ship_adapters import make_adapter  # noqa: E402
from tiny import save_tiny_base  # noqa: E402

from loraforge.files import write_json_atomic  # noqa: E402
from loraforge.models import load_base  # noqa: E402
from loraforge.serve.tenants import add_tenant  # noqa: E402
from loraforge.ship.registry import Registry  # noqa: E402

WINDOW_S = 10.0  # the compared windows' length
GROWTH_FLOOR_BYTES = 32 * 2**20
GROWTH_SHARE = 0.02
PROMPTS = [
    "Where is my order? It was due on Monday.",
    "The blender arrived with a cracked jar. What can I do?",
    "Write one sentence about the sea.",
    "What is the capital of France?",
    "My invoice shows two charges for one order.",
    "Summarise: the meeting moved to Thursday at ten.",
]


@dataclass
class Result:
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    tokens: int = 0
    latency_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    feedback: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def setup(work: Path, base: str, n_adapters: int, rank: int) -> tuple[str, dict[str, str], dict[str, list[str]]]:
    """A registry of n live adapters and two tenants; the base spec the server loads, keys, ACLs."""
    if base == "tiny":
        base = str(save_tiny_base(work / "tiny-base"))
    base_dir = str(load_base(base).model_dir)
    registry = Registry(work / "registry")
    names = [f"tenant-adapter-{i}" for i in range(n_adapters)]
    for i, name in enumerate(names):
        made = make_adapter(base_dir, work / "adapters" / name, r=rank, b_std=0.02, seed=10 + i)
        entry = registry.publish(made, name, force=True)  # random adapters carry no gate verdict
        registry.promote(name, entry.version)
    acl = {"north": names[0::2], "south": names[1::2]}
    tenants = work / "tenants.yaml"
    keys = {tenant: add_tenant(tenants, tenant, adapters) for tenant, adapters in acl.items()}
    document = yaml.safe_load(tenants.read_text())
    for tenant in acl:
        document["tenants"][tenant]["max_concurrent"] = 64  # the clients, not the per-tenant limit, bound load
    tenants.write_text(yaml.safe_dump(document, sort_keys=False))
    return base, keys, acl


def start_server(
    work: Path, base: str, n_adapters: int, dtype: str, threads: int | None
) -> tuple[subprocess.Popen[str], str]:
    argv = [sys.executable, "-m", "loraforge", "serve", "--registry", str(work / "registry"), "--base", base]
    argv += ["--tenants", str(work / "tenants.yaml"), "--port", "0", "--state-dir", str(work / "state")]
    argv += ["--max-loaded", str(n_adapters), "--dtype", dtype]
    argv += ["--threads", str(threads)] if threads is not None else []
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "400"}
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            return proc, found.group(1)
        if time.monotonic() > deadline:
            break
    proc.kill()
    sys.exit(f"the server did not start; see {work / 'server.log'}")


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)


def ask(
    c: openai.OpenAI, model: str, prompt: str, max_tokens: int, stream: bool, **sampling: Any
) -> tuple[str, int, float | None]:
    """Text, completion tokens, time to first token (streamed only)."""
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        reply = c.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, **sampling)  # type: ignore[arg-type]
        tokens = reply.usage.completion_tokens if reply.usage is not None else 0
        return reply.choices[0].message.content or "", tokens, None
    started, first, parts, tokens = time.perf_counter(), None, [], 0
    chunks = c.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}, **sampling,
    )  # fmt: skip
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first if first is not None else time.perf_counter() - started
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return "".join(parts), tokens, first


def correctness(url: str, keys: dict[str, str], acl: dict[str, list[str]], base_id: str) -> tuple[int, int]:
    """12 mixed greedy requests alone, then at once: how many equal their answer alone."""
    plan = []
    for i in range(12):
        tenant = "north" if i % 2 == 0 else "south"
        models = [*acl[tenant], base_id]
        plan.append((tenant, models[i // 2 % len(models)], PROMPTS[i % len(PROMPTS)], 8 + 4 * (i % 4)))
    alone = [ask(client(url, keys[t]), m, p, n, stream=False, temperature=0)[0] for t, m, p, n in plan]
    together: list[Any] = [None] * len(plan)

    def call(i: int) -> None:
        t, m, p, n = plan[i]
        try:
            together[i] = ask(client(url, keys[t]), m, p, n, stream=i % 2 == 1, temperature=0)[0]
        except Exception as exc:  # counted as unequal, shown below
            together[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(plan))]
    for i, thread in enumerate(threads):
        thread.start()
        time.sleep(0.05 if i % 3 == 2 else 0)
    for thread in threads:
        thread.join()
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):
        if a != b:
            print(f"  request {i} {plan[i][:2]}: alone {a!r}, together {b!r}", flush=True)
    return sum(a == b for a, b in zip(alone, together, strict=True)), len(plan)


def load(
    url: str, keys: dict[str, str], acl: dict[str, list[str]], base_id: str, args: argparse.Namespace, seconds: float
) -> Result:
    result = Result()
    deadline = time.monotonic() + seconds

    def worker(index: int) -> None:
        rng = random.Random(index)
        tenant = "north" if index % 2 == 0 else "south"
        c = client(url, keys[tenant])
        n = 0
        while time.monotonic() < deadline:
            model = rng.choice([*acl[tenant], base_id])
            sampling: dict[str, Any] = (
                {"temperature": 0} if rng.random() < 0.5 else {"temperature": 0.8, "seed": rng.randrange(1000)}
            )
            max_tokens = rng.randint(8, args.max_tokens)
            started = time.perf_counter()
            try:
                text, tokens, ttft = ask(c, model, rng.choice(PROMPTS), max_tokens, stream=n % 2 == 1, **sampling)
                if tokens < 1:
                    raise RuntimeError(f"no tokens in the answer ({text!r})")
                if n % 10 == 8:  # one in ten: feedback on a fresh non-streamed answer's id
                    reply = c.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
                    )
                    posted = httpx.post(
                        f"{url}/v1/feedback", json={"id": reply.id, "rating": 1},
                        headers={"Authorization": f"Bearer {keys[tenant]}"}, timeout=60,
                    )  # fmt: skip
                    posted.raise_for_status()
                    with result.lock:
                        result.feedback += 1
                with result.lock:
                    result.requests += 1
                    result.tokens += tokens
                    result.latency_s.append(time.perf_counter() - started)
                    if ttft is not None:
                        result.ttft_s.append(ttft)
            except Exception as exc:
                with result.lock:
                    result.requests += 1
                    result.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            n += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


def sample_rss(pid: int, stop: threading.Event, samples: list[tuple[float, int]]) -> None:
    proc = psutil.Process(pid)
    started = time.monotonic()
    while not stop.is_set():
        samples.append((time.monotonic() - started, proc.memory_info().rss))
        stop.wait(0.5)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="smollm2-135m-instruct", help="a loraforge base spec, or 'tiny'")
    parser.add_argument("--seconds", type=float, default=60.0, help="the measured load, after --warmup")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of the same load before it, not measured")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="fp32", help="the server's --dtype (fp32, bf16, auto)")
    parser.add_argument("--threads", type=int, default=None, help="the server's --threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        base, keys, acl = setup(work, args.base, args.adapters, args.rank)
        proc, url = start_server(work, base, args.adapters, args.dtype, args.threads)
        try:
            base_id = json.loads(
                httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {keys['north']}"}).text
            )["data"][0]["id"]
            print(
                f"CPU: {cpu_name()} ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}); "
                f"base {args.base} {args.dtype}; {args.adapters} adapters r{args.rank}; "
                f"server {url} pid {proc.pid}",
                flush=True,
            )
            equal, total = correctness(url, keys, acl, base_id)
            print(f"correctness: {equal}/{total} concurrent mixed requests equal their answer alone", flush=True)
            warmup = load(url, keys, acl, base_id, args, args.warmup)  # caches and pools reach their working size
            print(
                f"warm-up: {warmup.requests} requests, {len(warmup.errors)} errors in {args.warmup:.0f} s", flush=True
            )
            samples: list[tuple[float, int]] = []
            stop = threading.Event()
            sampler = threading.Thread(target=sample_rss, args=(proc.pid, stop, samples), daemon=True)
            sampler.start()
            started = time.monotonic()
            result = load(url, keys, acl, base_id, args, args.seconds)
            wall = time.monotonic() - started
            stop.set()
            sampler.join()
            result.errors[:0] = warmup.errors
            metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {keys['north']}"}).text
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=60)
        warm = [rss for t, rss in samples if t < WINDOW_S]
        last = [rss for t, rss in samples if t >= samples[-1][0] - WINDOW_S]
        warm_rss, last_rss = statistics.median(warm), statistics.median(last)
        growth = last_rss - warm_rss
        allowed = max(GROWTH_SHARE * warm_rss, GROWTH_FLOOR_BYTES)
        served = sum(
            float(m.group(1))
            for m in re.finditer(r'^loraforge_requests_total\{[^}]*status="200"[^}]*\} (\S+)', metrics, re.M)
        )
        rows = [
            ("clients x seconds", f"{args.clients} x {wall:.1f}"),
            ("requests (errors)", f"{result.requests} ({len(result.errors)})"),
            ("feedback posts", str(result.feedback)),
            ("completion tokens, tok/s", f"{result.tokens}, {result.tokens / wall:.1f}"),
            ("req/s", f"{result.requests / wall:.2f}"),
            ("latency p50 / p99 (s)", f"{pct(result.latency_s, 0.5):.2f} / {pct(result.latency_s, 0.99):.2f}"),
            ("TTFT p50 / p99 (s, streamed)", f"{pct(result.ttft_s, 0.5):.2f} / {pct(result.ttft_s, 0.99):.2f}"),
            (
                "server RSS warm -> last (MiB)",
                f"{warm_rss / 2**20:.0f} -> {last_rss / 2**20:.0f} "
                f"({growth / 2**20:+.1f}, allowed {allowed / 2**20:.0f})",
            ),
            ("server peak RSS (MiB)", f"{max(r for _, r in samples) / 2**20:.0f}"),
            ("200s in /metrics", f"{served:.0f}"),
            ("server exit on SIGINT", str(code)),
        ]
        curve = [f"{t:.0f}s {rss / 2**20:.0f}" for t, rss in samples[:: max(1, int(WINDOW_S / 0.5))]]
        print("server RSS (MiB) every 10 s of the measured load: " + ", ".join(curve))
        print("\n| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows))
        for error in result.errors[:10]:
            print(f"error: {error}")
        ok = equal == total and not result.errors and growth < allowed
        if args.json is not None:
            write_json_atomic(
                args.json,
                {
                    "cpu": cpu_name(),
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "table": dict(rows),
                    "errors": result.errors,
                    "rss": samples,
                    "ok": ok,
                },
            )
        print(f"\nverdict: {'pass' if ok else 'FAIL'}")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
