"""Adapters by name from the registry, checked on every load, held in a small LRU.

Every cold load runs the checks in docs/serve-security.md, in this order: the manifest exists, it
names the served base (fingerprint), its chat template matches its recorded hash, the signature
verifies (with a public key), the weights are safetensors only, and every tensor maps onto a
module of the base with the right shape. An adapter that fails one is refused with the reason and
never served as the base: vLLM serves a mismatched adapter silently as the base (vllm#34186,
vllm#55193), and a client then cannot tell it is not getting what it asked for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loraforge.errors import ModelError, RegistryError, SigningKeyError
from loraforge.models import LoadedBase, read_manifest
from loraforge.models.base import ALIASES
from loraforge.serve.engine import AdapterWeights
from loraforge.ship.registry import Registry
from loraforge.ship.signing import verify_adapter

ADAPTER_CONFIG = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# torch.load on these runs arbitrary code (pickle); a directory holding one is refused outright,
# even beside a safetensors file, so no later tool picks the pickle up by mistake.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
PEFT_PREFIX = "base_model.model."  # PEFT saves factors under the wrapper's path to the base model
# PEFT options that change the forward beyond scale * x @ A.T @ B.T (or need a base other than the
# one served): an engine computing plain LoRA would serve something else than was trained.
FORWARD_CHANGING_OPTIONS = (
    "use_dora",
    "modules_to_save",
    "rank_pattern",
    "alpha_pattern",
    "lora_bias",
    "fan_in_fan_out",
    "layer_replication",
    "trainable_token_indices",
    "target_parameters",
    "alora_invocation_tokens",
    "use_bdlora",
    "use_qalora",
)
# init_lora_weights that leave the base residualised (W - BA): the adapter needs that changed base
# unless it was converted to plain LoRA on save (then PEFT writes init_lora_weights=true).
RESIDUAL_INITS = ("pissa", "olora", "corda", "loftq")


# AdapterRefused.check, in the order the checks run (docs/serve-security.md)
REFUSAL_CHECKS = (
    "manifest",
    "base_fingerprint",
    "chat_template",
    "signature",
    "safetensors_only",
    "adapter_config",
    "weights",
    "tensors",
)


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
    ) -> None:
        if max_loaded < 1:
            raise ModelError(f"max_loaded={max_loaded} (--max-loaded): hold at least 1 adapter")
        if public_key is not None:
            check_public_key(Path(public_key))
        self.registry = registry
        self.base = base
        self.public_key = None if public_key is None else Path(public_key)
        self.max_loaded = max_loaded
        self.log = log or logging.getLogger(__name__)
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
        manifest = _checked_manifest(path, base, log)
        if public_key is not None:
            try:
                verify_adapter(path, public_key)
            except ModelError as exc:  # SignatureError: unsigned, other key, forged, files changed (named)
                raise _Refusal("signature", f"signature check failed: {exc}") from exc
        _refuse_unsafe_files(path)
        rank, scale = _rank_and_scale(_read_config(path))
        factors = _factors(_read_tensors(path / WEIGHTS_NAME), rank, base.module_shapes)
    except _Refusal as exc:
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


class _Refusal(Exception):
    """One failed check; load_verified turns it into AdapterRefused with the model and path."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(reason)
        self.check = check


def _checked_manifest(path: Path, base: ServedBase, log: logging.Logger) -> dict[str, Any]:
    """The manifest, when it names the served base and its template matches its hash."""
    try:
        manifest = read_manifest(path)
    except (ModelError, OSError, UnicodeDecodeError) as exc:
        raise _Refusal("manifest", f"unreadable manifest: {exc}") from exc
    if manifest is None:
        raise _Refusal(
            "manifest",
            "no loraforge.json manifest, so nothing says which base it was trained on; publish an adapter "
            "trained by loraforge (its OUTPUT/adapter carries one)",
        )
    trained_on = (manifest.get("base") or {}).get("fingerprint")
    if trained_on != base.fingerprint:
        raise _Refusal(
            "base_fingerprint",
            f"trained on base {trained_on}, but the served base {base.spec} is {base.fingerprint}; "
            "serve it on the base it was trained on, or train it again on this one",
        )
    template = manifest.get("chat_template")
    if not isinstance(template, dict):  # format 1 stored the text alone, with no hash to check
        raise _Refusal(
            "chat_template",
            "the manifest (format 1) records no chat_template.sha256, so the template served cannot be "
            "checked against the one trained; train or export the adapter again (format 2)",
        )
    actual = hashlib.sha256(template["text"].encode("utf-8")).hexdigest()
    if actual != template["sha256"]:
        raise _Refusal(
            "chat_template",
            f"chat_template.text hashes to {actual[:12]}, but chat_template.sha256 records "
            f"{template['sha256'][:12]}: the template was changed after training; publish the adapter again",
        )
    if base.chat_template is not None and template["text"] != base.chat_template:
        log.info("adapter %s is served with its own chat template (it differs from the base's)", path)
    return manifest


def _refuse_unsafe_files(path: Path) -> None:
    files = list(path.rglob("*"))
    links = sorted(p.relative_to(path).as_posix() for p in files if p.is_symlink())
    if links:  # publish copies files, never links; a link placed later can point anywhere on the server
        raise _Refusal(
            "safetensors_only", f"symbolic links {', '.join(links)} in the adapter; publish the adapter again"
        )
    pickles = sorted(p.relative_to(path).as_posix() for p in files if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise _Refusal(
            "safetensors_only",
            f"pickle weights {', '.join(pickles)} (loading them can run code); serve reads safetensors "
            "only: save the adapter with safe_serialization=True and publish it again",
        )
    if not (path / WEIGHTS_NAME).is_file():
        raise _Refusal("safetensors_only", f"no {WEIGHTS_NAME}; serve reads safetensors only: save the adapter again")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Refusal("adapter_config", f"cannot read {ADAPTER_CONFIG} ({exc}); save the adapter again") from exc
    if not isinstance(config, dict):
        raise _Refusal("adapter_config", f"{ADAPTER_CONFIG} is not a JSON object; save the adapter again")
    if config.get("peft_type") != "LORA":
        raise _Refusal(
            "adapter_config",
            f"{ADAPTER_CONFIG} peft_type is {config.get('peft_type')!r}; serve runs LoRA adapters only",
        )
    if config.get("use_dora"):
        raise _Refusal(
            "adapter_config", "DoRA (use_dora=true): the engines serve plain LoRA only; train with lora.variant lora"
        )
    set_options = [key for key in FORWARD_CHANGING_OPTIONS if config.get(key)]
    if set_options:
        shown = ", ".join(f"{key}={config[key]!r}" for key in set_options)
        raise _Refusal(
            "adapter_config",
            f"{ADAPTER_CONFIG} sets {shown}, which plain LoRA serving cannot compute; train without it",
        )
    if config.get("bias", "none") != "none":
        raise _Refusal(
            "adapter_config", f"{ADAPTER_CONFIG} bias={config['bias']!r} trains base biases; serve needs bias='none'"
        )
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(RESIDUAL_INITS):
        raise _Refusal(
            "adapter_config",
            f"init_lora_weights={init!r}: the adapter needs the residualised base it was trained on; save it "
            "converted to plain LoRA (path_initial_model_for_weight_conversion) and publish that",
        )
    return config


def _rank_and_scale(config: dict[str, Any]) -> tuple[int, float]:
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise _Refusal("adapter_config", f"{ADAPTER_CONFIG} r={r!r} is not a rank (a whole number from 1)")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise _Refusal("adapter_config", f"{ADAPTER_CONFIG} lora_alpha={alpha!r} is not a number")
    # rsLoRA scales by alpha/sqrt(r) so higher ranks keep learning; PEFT's use_rslora flag
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return r, float(scale)


def _read_tensors(weights_path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _Refusal(
            "weights",
            f"{WEIGHTS_NAME} is truncated or corrupt ({type(exc).__name__}: {exc}); publish the adapter again",
        ) from exc


def _factors(
    tensors: dict[str, torch.Tensor], rank: int, shapes: Mapping[str, tuple[int, int]]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) in fp32 by module name, every tensor accounted for and shaped for its module."""
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, part = _split_key(key, shapes)
        halves.setdefault(module, {})[part] = tensor
    if not halves:
        raise _Refusal("tensors", f"{WEIGHTS_NAME} holds no LoRA factors: it would change nothing (served as the base)")
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, parts in sorted(halves.items()):
        missing = [p for p in ("A", "B") if p not in parts]
        if missing:
            raise _Refusal("tensors", f"{module} has no lora_{missing[0]} factor; save the adapter again")
        in_features, out_features = shapes[module]
        a, b = parts["A"], parts["B"]
        if tuple(a.shape) != (rank, in_features) or tuple(b.shape) != (out_features, rank):
            raise _Refusal(
                "tensors",
                f"{module}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit the base's "
                f"({in_features} -> {out_features}) at r={rank} (want A {(rank, in_features)}, B "
                f"{(out_features, rank)}); it was trained on another base",
            )
        if not a.is_floating_point() or not b.is_floating_point():
            raise _Refusal("tensors", f"{module}: factors of dtype {a.dtype}/{b.dtype}; LoRA factors are floats")
        a32, b32 = a.to(torch.float32).contiguous(), b.to(torch.float32).contiguous()
        if not (torch.isfinite(a32).all() and torch.isfinite(b32).all()):
            raise _Refusal("tensors", f"{module}: factors hold NaN or inf (a diverged run); do not serve it")
        factors[module] = (a32, b32)
    return factors


def _split_key(key: str, shapes: Mapping[str, tuple[int, int]]) -> tuple[str, str]:
    """PEFT's `base_model.model.MODULE.lora_A.weight` -> (MODULE, "A"); refuse anything else."""
    if "lora_magnitude_vector" in key:
        raise _Refusal("tensors", f"tensor {key} is a DoRA magnitude; the engines serve plain LoRA only")
    for part in ("A", "B"):
        suffix = f".lora_{part}.weight"
        if key.startswith(PEFT_PREFIX) and key.endswith(suffix):
            module = key[len(PEFT_PREFIX) : -len(suffix)]
            if module not in shapes:
                raise _Refusal(
                    "tensors",
                    f"tensor {key} is for module {module}, which the served base has no linear layer "
                    "named; it was trained on another architecture or saved with another prefix",
                )
            return module, part
    raise _Refusal(
        "tensors", f"tensor {key} is not a LoRA factor (base_model.model.MODULE.lora_A/B.weight); serve runs plain LoRA"
    )
