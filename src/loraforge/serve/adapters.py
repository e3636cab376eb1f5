"""Adapters by name from the registry, checked on every load, held in a small LRU.

Every cold load runs the checks in docs/serve-security.md, in this order: the manifest exists, it
names the served base (fingerprint), its chat template matches its recorded hash, the signature
verifies (with a public key), the weights are safetensors only, and every tensor maps onto a
module of the base with the right shape. An adapter that fails one is refused with the reason and
never served as the base: vLLM serves a mismatched adapter silently as the base (vllm#34186,
vllm#55193), and a client then cannot tell it is not getting what it asked for. The checks
themselves are in `serve.adapter_checks`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

from torch import nn

from loraforge.errors import ModelError, RegistryError, SigningKeyError
from loraforge.models import LoadedBase
from loraforge.models.base import ALIASES
from loraforge.serve.adapter_checks import (
    PEFT_PREFIX,
    REFUSAL_CHECKS,
    WEIGHTS_NAME,
    Refusal,
    check_manifest,
    check_signature,
    lora_factors,
    rank_and_scale,
    read_config,
    read_tensors,
    refuse_unsafe_files,
)
from loraforge.serve.engine import AdapterWeights
from loraforge.ship.registry import Registry

__all__ = ["REFUSAL_CHECKS", "AdapterRefused", "AdapterStore", "ServedBase", "StoreStats", "load_verified"]


@dataclasses.dataclass(frozen=True)
class ServedBase:
    """What the store checks adapters against: the served base's identity and linear modules."""

    spec: str  # what --base named (alias such as smollm2-135m-instruct, a dir, a .gguf)
    model_id: str  # the `model` value clients use for the bare base
    fingerprint: str  # LoadedBase.fingerprint
    chat_template: str | None  # the base tokenizer's own template
    module_shapes: Mapping[str, tuple[int, int]]  # nn.Linear name -> (in_features, out_features)

    @classmethod
    def from_loaded(cls, base: LoadedBase, model_id: str | None = None) -> ServedBase:
        """Read the linear modules off the loaded model (names as in the plain model)."""
        return cls(
            spec=base.spec,
            model_id=model_id or default_model_id(base.spec),
            fingerprint=base.fingerprint,
            chat_template=base.chat_template,
            module_shapes=linear_shapes(base.model),
        )


def default_model_id(spec: str) -> str:
    """An alias as it is; a directory or file by its name (`/models/tiny/` -> tiny, `x.gguf` -> x)."""
    if spec in ALIASES:
        return spec
    path = Path(spec)
    return path.stem if path.suffix == ".gguf" else path.name or spec


def linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """nn.Linear name -> (in, out), as in the plain model even when PEFT already wraps it."""
    shapes: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or ".lora_" in f".{name}":
            continue
        plain = name.removeprefix(PEFT_PREFIX).removesuffix(".base_layer")
        shapes[plain] = (module.in_features, module.out_features)
    return shapes


class AdapterRefused(ModelError):
    """An adapter failed a load check; it is not served (not even as the base)."""

    def __init__(self, model: str, reason: str, path: Path | None = None, *, check: str = "other") -> None:
        # the message goes back to clients: it names the adapter, not the server's directories
        super().__init__(f"adapter {model!r} refused: {reason}")
        self.model = model  # what the client asked for
        self.reason = reason  # one line, with NAME@VERSION where a path inside the adapter was
        self.path = path  # the version directory, for the server's log
        self.check = check  # which check refused it: one of REFUSAL_CHECKS (a stable code for clients)


@dataclasses.dataclass
class StoreStats:
    hits: int = 0
    misses: int = 0  # cold loads attempted (refused ones included)
    refused: int = 0
    loaded: int = 0  # adapters held now
    load_seconds: list[float] = dataclasses.field(default_factory=list)  # the latest successful cold loads
    evicted: int = 0


MAX_LOAD_TIMES = 1000  # load_seconds keeps the latest ones: enough for percentiles, bounded


class AdapterStore:
    """`get(model)` -> verified AdapterWeights, from an LRU keyed by the version directory.

    Registry versions are immutable and promoting gives a new directory, so a cached entry is
    never stale. A refusal is cached too (bounded): a client retrying a bad adapter does not make
    the server re-hash and re-verify it every time. Thread-safe; two threads asking for the same
    cold adapter load it once.
    """

    def __init__(
        self,
        registry: Registry,
        base: ServedBase,
        *,
        public_key: Path | None = None,
        max_loaded: int = 8,
        log: logging.Logger | None = None,
        accept: Callable[[AdapterWeights], str | None] | None = None,
    ) -> None:
        """`accept`: the engine's own limits (vLLM's --max-lora-rank), run after every other check on a
        verified adapter; a reason it returns refuses the adapter (check "engine") like any failed check."""
        if max_loaded < 1:
            raise ModelError(f"max_loaded={max_loaded} (--max-loaded): hold at least 1 adapter")
        if public_key is not None:
            check_public_key(Path(public_key))
        self.registry = registry
        self.base = base
        self.public_key = None if public_key is None else Path(public_key)
        self.max_loaded = max_loaded
        self.log = log or logging.getLogger(__name__)
        self.accept = accept
        self._lock = threading.Lock()
        self._loaded: OrderedDict[Path, AdapterWeights] = OrderedDict()
        self._refusals: OrderedDict[Path, AdapterRefused] = OrderedDict()  # by directory
        self._loading: dict[Path, threading.Lock] = {}
        self._stats = StoreStats()

    def get(self, model: str) -> AdapterWeights:
        """model: "NAME" (its live version) or "NAME@VERSION". Raises RegistryError for a bad or
        unknown name/version (the HTTP layer answers 404), AdapterRefused for an adapter that fails
        a check (logged with the reason; HTTP answers 4xx, never serves it as the base)."""
        name, version = parse_model(model)
        path = self.registry.resolve(name, version)  # checks the name before touching the disk
        found = self._cached(model, path)
        if found is not None:
            return found
        with self._lock:
            path_lock = self._loading.setdefault(path, threading.Lock())
        with path_lock:  # one cold load per directory; the others wait and then hit
            found = self._cached(model, path)
            if found is not None:
                return found
            try:
                return self._load(model, name, path)
            finally:
                with self._lock:
                    self._loading.pop(path, None)

    def names(self) -> list[str]:
        """Registry names that have a live version (what GET /v1/models lists, before the ACL)."""
        return sorted({entry.name for entry in self.registry.list() if entry.live})

    def stats(self) -> StoreStats:
        with self._lock:
            s = self._stats
            return StoreStats(s.hits, s.misses, s.refused, len(self._loaded), list(s.load_seconds), s.evicted)

    def _cached(self, model: str, path: Path) -> AdapterWeights | None:
        with self._lock:
            weights = self._loaded.get(path)
            if weights is not None:
                self._loaded.move_to_end(path)
                self._stats.hits += 1
                return weights
            refusal = self._refusals.get(path)
            if refusal is not None:
                self._stats.refused += 1
                raise AdapterRefused(model, refusal.reason, path, check=refusal.check)
        return None

    def _load(self, model: str, name: str, path: Path) -> AdapterWeights:
        started = time.perf_counter()
        with self._lock:
            self._stats.misses += 1
        try:
            weights = load_verified(path, name, self.base, self.public_key, self.log, model=model)
            reason = self.accept(weights) if self.accept is not None else None
            if reason is not None:
                raise AdapterRefused(model, " ".join(reason.split()), path, check="engine")
        except AdapterRefused as exc:
            self.log.warning("refused adapter %s (%s): %s", model, path, exc.reason)
            with self._lock:
                self._stats.refused += 1
                self._refusals[path] = exc
                while len(self._refusals) > 4 * self.max_loaded:
                    self._refusals.popitem(last=False)
            raise
        seconds = time.perf_counter() - started
        weights = dataclasses.replace(weights, load_seconds=seconds)
        with self._lock:
            self._loaded[path] = weights
            while len(self._loaded) > self.max_loaded:
                evicted, _ = self._loaded.popitem(last=False)
                self._stats.evicted += 1
                self.log.info("evicted adapter %s from the store (max_loaded=%d)", evicted, self.max_loaded)
            self._stats.load_seconds = [*self._stats.load_seconds[-(MAX_LOAD_TIMES - 1) :], seconds]
        self.log.info("loaded adapter %s (%s) in %.3f s", weights.key, path, seconds)
        return weights


def check_public_key(path: Path) -> None:
    """Refuse an unreadable --pub at start-up, not on the first request that needs it."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SigningKeyError(
            f"public_key {path} (--pub) cannot be read as a PEM public key ({exc}); pass the public.pem "
            "paired with the key the adapters were signed with"
        ) from exc


def parse_model(model: str) -> tuple[str, int | None]:
    """Split a request's `model` into NAME and VERSION (None: the live one); the name itself is
    checked by Registry.resolve, before any file is read."""
    if not isinstance(model, str):
        raise RegistryError(f"model {model!r} is not a string; ask for NAME or NAME@VERSION")
    name, sep, version_text = model.partition("@")
    if not sep:
        return name, None
    if not (version_text.isascii() and version_text.isdigit()) or int(version_text) < 1:
        raise RegistryError(
            f"model {model!r}: version {version_text!r} is not a whole number from 1; ask for {name} "
            f"(its live version) or {name}@N, e.g. {name}@1"
        )
    return name, int(version_text)


def load_verified(
    path: Path,
    name: str,
    base: ServedBase,
    public_key: Path | None,
    log: logging.Logger,
    *,
    model: str | None = None,
) -> AdapterWeights:
    """Run every load check on the version directory `path`; AdapterRefused names the first that
    fails (`model`: what was asked for, NAME by default)."""
    version = int(path.parent.name) if path.parent.name.isdigit() else 0
    key = f"{name}@{version}"
    try:
        manifest = check_manifest(path, base.spec, base.fingerprint, base.chat_template, log)
        if public_key is not None:
            check_signature(path, public_key)
        refuse_unsafe_files(path)
        rank, scale = rank_and_scale(read_config(path))
        factors = lora_factors(read_tensors(path / WEIGHTS_NAME), rank, base.module_shapes)
    except Refusal as exc:
        reason = " ".join(str(exc).replace(str(path), key).split())  # one line, no server paths
        raise AdapterRefused(model or name, reason, path, check=exc.check) from exc.__cause__
    return AdapterWeights(
        key=key,
        name=name,
        version=version,
        rank=rank,
        scale=scale,
        factors=factors,
        chat_template=manifest["chat_template"]["text"],
        path=str(path),
    )
