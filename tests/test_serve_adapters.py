"""The adapter store: registry lookup by name, the checks every load runs, the LRU.

Adapters are real PEFT adapters on the tiny base (tests/ship_adapters.py, B non-zero), published
into a real registry; a bad adapter is made by editing a real one the way a mistake or an attacker
would (another base's fingerprint, a renamed module, a flipped file), never by faking the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from ship_adapters import make_adapter

from loraforge.errors import RegistryError
from loraforge.files import write_json_atomic
from loraforge.models import MANIFEST_NAME, LoadedBase, load_base, read_manifest
from loraforge.serve.adapters import AdapterRefused, AdapterStore, ServedBase
from loraforge.ship.registry import Registry
from loraforge.ship.signing import generate_keypair, sign_adapter

LOGGER = "loraforge.serve.adapters"
WEIGHTS = "adapter_model.safetensors"
OTHER_BASE = "sha256:" + "e" * 64


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Module fixtures load the base before the per-test LORAFORGE_HOME is set: give them the same one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORAFORGE_HOME", str(tmp_path_factory.getbasetemp() / "loraforge-home"))
        yield


@pytest.fixture(scope="module")
def loaded(tiny_base_dir: Path, module_home: None) -> LoadedBase:
    return load_base(str(tiny_base_dir))


@pytest.fixture(scope="module")
def served(loaded: LoadedBase) -> ServedBase:
    return ServedBase.from_loaded(loaded)


@pytest.fixture(scope="module")
def good_adapter(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory, module_home: None) -> Path:
    return make_adapter(tiny_base_dir, tmp_path_factory.mktemp("good") / "adapter", r=4)


@pytest.fixture
def source(good_adapter: Path, tmp_path: Path) -> Path:
    """A fresh copy of the good adapter to edit before publishing."""
    return Path(shutil.copytree(good_adapter, tmp_path / "source"))


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def publish(registry: Registry, adapter_dir: Path, name: str = "bot") -> Path:
    """Publish (the test adapters carry no gate result) and make live; the version directory."""
    entry = registry.publish(adapter_dir, name, force=True)
    registry.promote(name, entry.version)
    return entry.path


def edit_manifest(adapter_dir: Path, **changes: object) -> None:
    manifest = read_manifest(adapter_dir) or {}
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        manifest[section][key] = value
    write_json_atomic(adapter_dir / MANIFEST_NAME, manifest)


def rewrite_tensors(adapter_dir: Path, edit: Callable[[dict[str, torch.Tensor]], object]) -> None:
    tensors = load_file(str(adapter_dir / WEIGHTS))
    edit(tensors)
    save_file(tensors, str(adapter_dir / WEIGHTS))


def assert_refused(store: AdapterStore, caplog: pytest.LogCaptureFixture, check: str, reason: str) -> None:
    """Refused by `check` with `reason` in the error and in the warning the store logs."""
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(AdapterRefused, match=reason) as info:
        store.get("bot")
    assert (info.value.model, info.value.check) == ("bot", check)
    logged = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert any("refused adapter" in line and re.search(reason, line) for line in logged), logged


# ----- a good adapter


def test_served_base_lists_the_plain_models_linear_modules(served: ServedBase, loaded: LoadedBase) -> None:
    q_proj = loaded.model.get_submodule("model.layers.0.self_attn.q_proj")
    assert served.module_shapes["model.layers.0.self_attn.q_proj"] == (q_proj.in_features, q_proj.out_features)
    assert served.model_id == loaded.model_dir.name  # a directory spec is known by its name
    assert served.fingerprint == loaded.fingerprint


def test_good_adapter_loads_with_its_scale_and_shapes(registry: Registry, source: Path, served: ServedBase) -> None:
    path = publish(registry, source)
    config = json.loads((path / "adapter_config.json").read_text())

    weights = AdapterStore(registry, served).get("bot")

    assert (weights.key, weights.name, weights.version, weights.rank) == ("bot@1", "bot", 1, config["r"])
    assert weights.scale == config["lora_alpha"] / config["r"]
    assert len(weights.factors) == len(load_file(str(path / WEIGHTS))) // 2
    for module, (a, b) in weights.factors.items():
        in_features, out_features = served.module_shapes[module]
        assert (tuple(a.shape), tuple(b.shape)) == ((config["r"], in_features), (out_features, config["r"]))
        assert a.dtype == b.dtype == torch.float32
    assert weights.chat_template == (read_manifest(path) or {})["chat_template"]["text"]


def test_factors_reproduce_the_peft_layer_output(
    registry: Registry, source: Path, served: ServedBase, tiny_base_dir: Path
) -> None:
    path = publish(registry, source)
    weights = AdapterStore(registry, served).get("bot")
    model = PeftModel.from_pretrained(load_base(str(tiny_base_dir)).model, str(path)).eval()
    module = "model.layers.1.mlp.down_proj"
    layer = model.base_model.model.get_submodule(module)
    x = torch.randn(3, served.module_shapes[module][0], generator=torch.Generator().manual_seed(0))
    a, b = weights.factors[module]

    with torch.no_grad():
        expected = layer(x)
        ours = layer.base_layer(x) + weights.scale * (x @ a.T @ b.T)

    assert torch.allclose(ours, expected, atol=1e-6)
    assert not torch.allclose(layer.base_layer(x), expected, atol=1e-4)  # the adapter does change the output


def test_rslora_scale_is_alpha_over_sqrt_r(registry: Registry, source: Path, served: ServedBase) -> None:
    config = json.loads((source / "adapter_config.json").read_text())
    write_json_atomic(source / "adapter_config.json", {**config, "use_rslora": True})
    publish(registry, source)

    weights = AdapterStore(registry, served).get("bot")

    assert weights.scale == pytest.approx(config["lora_alpha"] / math.sqrt(config["r"]))


def test_signed_adapter_loads_with_the_public_key(
    registry: Registry, source: Path, served: ServedBase, tmp_path: Path
) -> None:
    private_key, public_key = generate_keypair(tmp_path / "keys")
    sign_adapter(source, private_key)
    publish(registry, source)

    assert AdapterStore(registry, served, public_key=public_key).get("bot").key == "bot@1"


def test_own_template_is_served_and_logged_not_refused(
    registry: Registry, source: Path, served: ServedBase, caplog: pytest.LogCaptureFixture
) -> None:
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    edit_manifest(source, chat_template__text=template)
    edit_manifest(source, chat_template__sha256=hashlib.sha256(template.encode()).hexdigest())
    publish(registry, source)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        weights = AdapterStore(registry, served).get("bot")

    assert weights.chat_template == template
    assert any("own chat template" in r.getMessage() for r in caplog.records)


# ----- refusals, each with its reason in the error and the log


def test_adapter_for_another_base_is_refused_printing_both_fingerprints(
    registry: Registry, source: Path, served: ServedBase, caplog: pytest.LogCaptureFixture
) -> None:
    edit_manifest(source, base__fingerprint=OTHER_BASE)
    publish(registry, source)
    assert_refused(
        AdapterStore(registry, served),
        caplog,
        "base_fingerprint",
        f"trained on base {OTHER_BASE}.*is {served.fingerprint}",
    )


def test_template_that_does_not_match_its_hash_is_refused(
    registry: Registry, source: Path, served: ServedBase, caplog: pytest.LogCaptureFixture
) -> None:
    edit_manifest(source, chat_template__text="{{ messages }}")  # the recorded sha256 is the old template's
    publish(registry, source)
    assert_refused(AdapterStore(registry, served), caplog, "chat_template", "changed after training")


def test_adapter_without_a_manifest_is_refused(
    registry: Registry, source: Path, served: ServedBase, caplog: pytest.LogCaptureFixture
) -> None:
    path = publish(registry, source)
    (path / MANIFEST_NAME).unlink()
    assert_refused(AdapterStore(registry, served), caplog, "manifest", "no loraforge.json manifest")


def test_format_1_manifest_without_a_template_hash_is_refused(
    registry: Registry, source: Path, served: ServedBase, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = read_manifest(source) or {}
    legacy = {"format": 1, "base": manifest["base"], "chat_template": manifest["chat_template"]["text"]}
    write_json_atomic(source / MANIFEST_NAME, legacy)
    publish(registry, source)
    assert_refused(
        AdapterStore(registry, served), caplog, "chat_template", r"\(format 1\) records no chat_template.sha256"
    )


def test_file_changed_after_signing_is_refused_naming_it(
    registry: Registry, source: Path, served: ServedBase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    private_key, public_key = generate_keypair(tmp_path / "keys")
    sign_adapter(source, private_key)
    path = publish(registry, source)
    config = json.loads((path / "adapter_config.json").read_text())
    config["lora_alpha"] *= 10  # after signing: every update ten times as strong, and nothing else amiss
    write_json_atomic(path / "adapter_config.json", config)
    store = AdapterStore(registry, served, public_key=public_key)
    assert_refused(store, caplog, "signature", "signature check failed.*changed: adapter_config.json")


def test_unsigned_adapter_is_refused_with_a_public_key(
    registry: Registry, source: Path, served: ServedBase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, public_key = generate_keypair(tmp_path / "keys")
    publish(registry, source)
    assert_refused(AdapterStore(registry, served, public_key=public_key), caplog, "signature", "is not signed")


@pytest.mark.parametrize("pickle_name", ["adapter_model.bin", "extra/optimizer.pt"])
def test_pickle_weights_are_refused(
    registry: Registry,
    source: Path,
    served: ServedBase,
    caplog: pytest.LogCaptureFixture,
    pickle_name: str,
) -> None:
    (source / pickle_name).parent.mkdir(exist_ok=True)
    torch.save(load_file(str(source / WEIGHTS)), source / pickle_name)
    publish(registry, source)
    assert_refused(AdapterStore(registry, served), caplog, "safetensors_only", f"pickle weights {pickle_name}")


def test_symlink_in_the_version_directory_is_refused(
    registry: Registry, source: Path, served: ServedBase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = publish(registry, source)
    (tmp_path / "elsewhere.json").write_text("{}")
    (path / "notes.json").symlink_to(tmp_path / "elsewhere.json")
    assert_refused(AdapterStore(registry, served), caplog, "safetensors_only", "symbolic links notes.json")


def test_refusal_names_the_version_not_the_server_path(
    registry: Registry, source: Path, served: ServedBase, tmp_path: Path
) -> None:
    _, public_key = generate_keypair(tmp_path / "keys")
    path = publish(registry, source)
    with pytest.raises(AdapterRefused, match="bot@1 is not signed") as info:
        AdapterStore(registry, served, public_key=public_key).get("bot")
    assert str(registry.root) not in str(info.value)
    assert info.value.path == path  # the server's log gets the directory


def test_adapter_without_safetensors_is_refused(
    registry: Registry, source: Path, served: ServedBase, caplog: pytest.LogCaptureFixture
) -> None:
    (source / WEIGHTS).unlink()
    publish(registry, source)
    assert_refused(AdapterStore(registry, served), caplog, "safetensors_only", f"no {WEIGHTS}")


def test_truncated_safetensors_is_refused(
    registry: Registry, source: Path, served: ServedBase, caplog: pytest.LogCaptureFixture
) -> None:
    path = publish(registry, source)
    data = (path / WEIGHTS).read_bytes()
    (path / WEIGHTS).write_bytes(data[: len(data) // 2])
    assert_refused(AdapterStore(registry, served), caplog, "weights", "truncated or corrupt")


def test_tensor_for_a_module_the_base_lacks_is_refused(
    registry: Registry, source: Path, served: ServedBase, caplog: pytest.LogCaptureFixture
) -> None:
    # vllm#34186: the same factors under another prefix (a VLM's language_model) served the base silently
    def misplace(tensors: dict[str, torch.Tensor]) -> None:
        for key in list(tensors):
            tensors[key.replace(".model.layers.", ".language_model.layers.")] = tensors.pop(key)

    rewrite_tensors(source, misplace)
    publish(registry, source)
    assert_refused(AdapterStore(registry, served), caplog, "tensors", "module language_model.layers.*no linear layer")


def test_factor_of_the_wrong_shape_is_refused(
    registry: Registry, source: Path, served: ServedBase, caplog: pytest.LogCaptureFixture
) -> None:
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"

    def widen(tensors: dict[str, torch.Tensor]) -> None:
        rank, in_features = tensors[key].shape
        tensors[key] = torch.zeros(rank, in_features + 8)

    rewrite_tensors(source, widen)
    publish(registry, source)
    assert_refused(
        AdapterStore(registry, served), caplog, "tensors", r"model.layers.0.self_attn.q_proj: lora_A \(4, 72\)"
    )


def test_adapter_with_a_missing_factor_is_refused(
    registry: Registry, source: Path, served: ServedBase, caplog: pytest.LogCaptureFixture
) -> None:
    rewrite_tensors(source, lambda t: t.pop("base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"))
    publish(registry, source)
    assert_refused(AdapterStore(registry, served), caplog, "tensors", "model.layers.0.mlp.up_proj has no lora_B")


def test_adapter_with_no_factors_is_refused(
    registry: Registry, source: Path, served: ServedBase, caplog: pytest.LogCaptureFixture
) -> None:
    # vllm#55193: an adapter that adapts nothing the server computes was served as the base
    save_file({}, str(source / WEIGHTS))
    publish(registry, source)
    assert_refused(AdapterStore(registry, served), caplog, "tensors", "holds no LoRA factors")


def test_dora_adapter_is_refused(
    registry: Registry,
    served: ServedBase,
    tiny_base_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    publish(registry, make_adapter(tiny_base_dir, tmp_path / "dora", variant="dora", r=4))
    assert_refused(AdapterStore(registry, served), caplog, "adapter_config", "DoRA")


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("modules_to_save", ["lm_head"], "modules_to_save"),
        ("bias", "all", "bias='all'"),
        ("rank_pattern", {"q_proj": 8}, "rank_pattern"),
        ("alpha_pattern", {"q_proj": 8}, "alpha_pattern"),
    ],
)
def test_config_options_plain_lora_cannot_compute_are_refused(
    registry: Registry,
    source: Path,
    served: ServedBase,
    caplog: pytest.LogCaptureFixture,
    option: str,
    value: object,
    reason: str,
) -> None:
    config = json.loads((source / "adapter_config.json").read_text())
    write_json_atomic(source / "adapter_config.json", {**config, option: value})
    publish(registry, source)
    assert_refused(AdapterStore(registry, served), caplog, "adapter_config", reason)


# ----- names and versions


@pytest.mark.parametrize("model", ["../etc", "a/b", "Bot", ""])
def test_path_like_names_are_refused_before_the_disk(
    tmp_path: Path, served: ServedBase, good_adapter: Path, model: str
) -> None:
    # real adapters sit where the path would lead: reaching them would mean the name was used as a path
    registry = Registry(tmp_path / "registry")
    Registry(tmp_path).publish(good_adapter, "etc", force=True)
    Registry(tmp_path / "registry" / "a").publish(good_adapter, "b", force=True)
    with pytest.raises(RegistryError, match="is not allowed"):
        AdapterStore(registry, served).get(model)


@pytest.mark.parametrize("model", ["bot@x", "bot@0", "bot@", "bot@1@2", "bot@١"])
def test_a_version_that_is_not_a_whole_number_is_refused(
    registry: Registry, source: Path, served: ServedBase, model: str
) -> None:
    publish(registry, source)
    with pytest.raises(RegistryError, match=r"not a whole number from 1; ask for bot .* bot@1"):
        AdapterStore(registry, served).get(model)


def test_unknown_name_and_version_are_registry_errors(registry: Registry, source: Path, served: ServedBase) -> None:
    publish(registry, source)
    store = AdapterStore(registry, served)
    with pytest.raises(RegistryError, match="no adapter named nobody"):
        store.get("nobody")
    with pytest.raises(RegistryError, match="bot@7 does not exist"):
        store.get("bot@7")


def test_names_lists_only_names_with_a_live_version(registry: Registry, source: Path, served: ServedBase) -> None:
    publish(registry, source, "live-one")
    registry.publish(source, "not-live", force=True)
    assert AdapterStore(registry, served).names() == ["live-one"]


# ----- the LRU


def test_lru_hits_misses_and_evicts_the_least_recent(registry: Registry, source: Path, served: ServedBase) -> None:
    for name in ("a", "b", "c"):
        publish(registry, source, name)
    store = AdapterStore(registry, served, max_loaded=2)

    first_a = store.get("a")
    store.get("b")
    assert store.get("a") is first_a  # hit: a is now the most recent
    store.get("c")  # evicts b
    store.get("b")  # miss again; evicts a

    stats = store.stats()
    assert (stats.hits, stats.misses, stats.evicted, stats.loaded) == (1, 4, 2, 2)
    assert len(stats.load_seconds) == 4 and all(s > 0 for s in stats.load_seconds)
    assert store.get("a") is not first_a


def test_promoting_a_new_version_serves_it_on_the_next_get(
    registry: Registry, source: Path, served: ServedBase
) -> None:
    publish(registry, source)
    store = AdapterStore(registry, served)
    assert store.get("bot").key == "bot@1"

    publish(registry, source)  # version 2, promoted

    assert (store.get("bot").key, store.get("bot@1").key) == ("bot@2", "bot@1")


def test_a_refusal_is_remembered_not_reverified(
    registry: Registry, source: Path, served: ServedBase, caplog: pytest.LogCaptureFixture
) -> None:
    edit_manifest(source, base__fingerprint=OTHER_BASE)
    publish(registry, source)
    store = AdapterStore(registry, served)
    for _ in range(3):
        with pytest.raises(AdapterRefused, match="trained on base") as info:
            store.get("bot")
        assert info.value.check == "base_fingerprint"
    stats = store.stats()
    assert (stats.misses, stats.refused, stats.loaded) == (1, 3, 0)


def test_threads_asking_for_one_cold_adapter_load_it_once(registry: Registry, source: Path, served: ServedBase) -> None:
    publish(registry, source)
    store = AdapterStore(registry, served)
    start = threading.Barrier(4)
    results = []

    def ask() -> None:
        start.wait()
        results.append(store.get("bot"))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 4 and all(r is results[0] for r in results)
    assert (store.stats().misses, store.stats().hits) == (1, 3)
