"""The adapter registry: versions, the live pointer, the gate and name rules, the per-name lock.

Adapters are real tiny PEFT adapters (tests/tiny.py's base) whose manifest carries the verdict a
test needs; nothing is trained here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from manifests import valid_manifest

import loraforge
from loraforge.cli import main
from loraforge.config import LoraSpec
from loraforge.errors import GateBlocked, RegistryError, SignatureError
from loraforge.files import write_json_atomic
from loraforge.models import MANIFEST_NAME, attach_lora, load_base, read_manifest, save_adapter
from loraforge.ship.registry import Registry
from loraforge.ship.registry_files import exclusive_lock, hash_tree
from loraforge.ship.signing import generate_keypair, sign_adapter

BLOCK_REASON = "golden/format: 40.0% vs base 90.0%"


def gate_result(verdict: str, *reasons: str) -> dict[str, Any]:
    """The manifest's eval section as the gate writes it, for one golden slice."""
    slices = {"format": {"n": 10, "probe": False, "base": 0.9, "adapter": 0.4 if reasons else 0.9}}
    return {"verdict": verdict, "reasons": list(reasons), "notes": [], "slices": slices}


@pytest.fixture(scope="module")
def gated_adapter(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny adapter whose manifest says the gate passed it; tests copy it and edit the verdict."""
    base = load_base(str(tiny_base_dir))
    manifest = valid_manifest(base.fingerprint, eval=gate_result("pass"))
    return save_adapter(attach_lora(base.model, LoraSpec(r=2)), tmp_path_factory.mktemp("adapter") / "a", manifest)


def make_adapter(gated_adapter: Path, out: Path, gate: dict[str, Any] | None | str = "pass") -> Path:
    """A copy of the tiny adapter with `gate` as its manifest's eval ("pass"/"block" for the usual ones)."""
    shutil.copytree(gated_adapter, out)
    manifest = read_manifest(out) or {}
    if gate == "pass":
        manifest["eval"] = gate_result("pass")
    elif gate == "block":
        manifest["eval"] = gate_result("block", BLOCK_REASON)
    else:
        manifest["eval"] = gate
    write_json_atomic(out / MANIFEST_NAME, manifest)
    return out


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def test_publish_promote_publish_promote_rollback_leaves_the_first_live(
    registry: Registry, gated_adapter: Path, tmp_path: Path
) -> None:
    first = registry.publish(make_adapter(gated_adapter, tmp_path / "v1"), "support-bot")
    registry.promote("support-bot", first.version)
    second = registry.publish(make_adapter(gated_adapter, tmp_path / "v2"), "support-bot")
    registry.promote("support-bot", second.version)
    assert registry.resolve("support-bot") == second.path

    state = registry.rollback("support-bot")

    assert (first.version, second.version) == (1, 2)
    assert (state.version, state.previous, state.history) == (1, 2, [])
    assert registry.resolve("support-bot") == first.path
    assert [(e.version, e.live) for e in registry.list()] == [(1, True), (2, False)]  # the replaced one stays


def test_published_version_is_a_loadable_copy_with_its_hashes(
    registry: Registry, gated_adapter: Path, tmp_path: Path
) -> None:
    source = make_adapter(gated_adapter, tmp_path / "src")
    entry = registry.publish(source, "bot")
    shutil.rmtree(source)  # the registry holds its own copy
    assert entry.files == hash_tree(entry.path)
    assert set(entry.files) >= {"adapter_config.json", "adapter_model.safetensors", MANIFEST_NAME}
    assert (entry.verdict, entry.forced, entry.forced_reason) == ("pass", False, None)
    assert entry.base_fingerprint == (read_manifest(entry.path) or {})["base"]["fingerprint"]
    assert registry.show("bot", 1).record() == entry.record()


def test_gate_blocked_adapter_is_refused(registry: Registry, gated_adapter: Path, tmp_path: Path) -> None:
    blocked = make_adapter(gated_adapter, tmp_path / "blocked", "block")
    with pytest.raises(GateBlocked, match=r"blocked it \(golden/format.*--force"):
        registry.publish(blocked, "bot")
    assert not (registry.root / "bot").exists()


@pytest.mark.parametrize(
    ("gate", "message"),
    [(None, "no gate result.*force=True / --force"), ({"verdict": "maybe"}, "manifest key 'eval'.*does not match")],
)
def test_adapter_without_a_gate_result_is_refused(
    registry: Registry, gated_adapter: Path, tmp_path: Path, gate: dict[str, str] | None, message: str
) -> None:
    with pytest.raises(RegistryError, match=message):
        registry.publish(make_adapter(gated_adapter, tmp_path / "ungated", gate), "bot")
    assert registry.list() == []


def test_forced_publish_of_a_blocked_adapter_is_recorded(
    registry: Registry, gated_adapter: Path, tmp_path: Path
) -> None:
    entry = registry.publish(make_adapter(gated_adapter, tmp_path / "blocked", "block"), "bot", force=True)
    stored = json.loads((entry.path.parent / "entry.json").read_text())
    assert (stored["verdict"], stored["forced"]) == ("block", True)
    assert BLOCK_REASON in stored["forced_reason"]


def test_force_on_a_passed_adapter_records_nothing_forced(
    registry: Registry, gated_adapter: Path, tmp_path: Path
) -> None:
    entry = registry.publish(make_adapter(gated_adapter, tmp_path / "ok"), "bot", force=True)
    assert (entry.forced, entry.forced_reason) == (False, None)


def _blocked_lock_waiters(lock_path: Path) -> int:
    """How many processes wait on `lock_path`'s flock now (/proc/locks marks waiters with '->')."""
    inode = f":{os.stat(lock_path).st_ino} "
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if "->" in line and inode in line)


def test_two_parallel_publishes_of_one_name_give_versions_1_and_2(
    registry: Registry, gated_adapter: Path, tmp_path: Path
) -> None:
    sources = [make_adapter(gated_adapter, tmp_path / f"src{i}") for i in (1, 2)]
    env = {**os.environ, "PYTHONPATH": str(Path(loraforge.__file__).parent.parent), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "loraforge", "registry", "publish", "--name", "bot"]
    argv += ["--registry", str(registry.root), "--json"]
    lock = registry.root / "bot" / ".lock"
    # Hold the name's lock until both publishers wait on it, so they are certain to contend.
    with exclusive_lock(lock):
        procs = [subprocess.Popen([*argv, str(s)], env=env, stdout=subprocess.PIPE, text=True) for s in sources]
        deadline = time.monotonic() + 300  # a bound on waiting for the start-up, not a measurement
        while _blocked_lock_waiters(lock) < 2:
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert _blocked_lock_waiters(lock) == 2, "both publishers should be waiting on the lock"
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]

    entries = [json.loads(out) for out in outs]
    assert sorted(e["version"] for e in entries) == [1, 2]
    assert sorted(e["source"] for e in entries) == sorted(str(s) for s in sources)
    for entry in registry.list():
        assert entry.files == hash_tree(entry.path) == hash_tree(Path(entry.source))  # both complete
    assert sorted(p.name for p in (registry.root / "bot" / "versions").iterdir()) == ["1", "2"]


@pytest.mark.parametrize("name", ["../x", "a/b", "/abs", "UPPER", "", ".hidden", "bot\n", "a" * 65])
def test_bad_names_are_refused(registry: Registry, gated_adapter: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(RegistryError, match="is not allowed.*a-z, 0-9"):
        registry.publish(make_adapter(gated_adapter, tmp_path / "ok"), name)
    assert not registry.root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]  # nothing written beside the registry either


def test_removing_the_live_version_is_refused(registry: Registry, gated_adapter: Path, tmp_path: Path) -> None:
    registry.publish(make_adapter(gated_adapter, tmp_path / "a"), "bot")
    registry.promote("bot", 1)
    with pytest.raises(RegistryError, match="bot@1 is live.*promote another version first"):
        registry.remove("bot", 1)
    assert registry.resolve("bot").is_dir()


def test_removed_version_leaves_history_and_its_number_is_not_reused(
    registry: Registry, gated_adapter: Path, tmp_path: Path
) -> None:
    for i in (1, 2, 3):
        registry.publish(make_adapter(gated_adapter, tmp_path / f"v{i}"), "bot")
        registry.promote("bot", i)
    registry.remove("bot", 2)
    assert [e.version for e in registry.list()] == [1, 3]
    assert registry.rollback("bot").version == 1  # 2 is gone, so rollback skips to the one before it
    assert registry.publish(make_adapter(gated_adapter, tmp_path / "v4"), "bot").version == 4


def test_rollback_without_an_earlier_live_version_is_refused(
    registry: Registry, gated_adapter: Path, tmp_path: Path
) -> None:
    registry.publish(make_adapter(gated_adapter, tmp_path / "a"), "bot")
    registry.promote("bot", 1)
    with pytest.raises(RegistryError, match="no earlier live version.*promote"):
        registry.rollback("bot")
    assert registry.resolve("bot") == registry.show("bot", 1).path


def test_promote_of_a_missing_version_is_refused(registry: Registry, gated_adapter: Path, tmp_path: Path) -> None:
    registry.publish(make_adapter(gated_adapter, tmp_path / "a"), "bot")
    with pytest.raises(RegistryError, match=r"bot@7 does not exist \(versions of bot: 1\)"):
        registry.promote("bot", 7)


def test_resolve_without_a_live_version_says_to_promote(
    registry: Registry, gated_adapter: Path, tmp_path: Path
) -> None:
    registry.publish(make_adapter(gated_adapter, tmp_path / "a"), "bot")
    with pytest.raises(RegistryError, match="bot has no live version; promote one"):
        registry.resolve("bot")
    with pytest.raises(RegistryError, match="no adapter named other"):
        registry.resolve("other")


def test_verify_catches_a_flipped_byte(registry: Registry, gated_adapter: Path, tmp_path: Path) -> None:
    registry.publish(make_adapter(gated_adapter, tmp_path / "a"), "bot")
    entry = registry.publish(make_adapter(gated_adapter, tmp_path / "b"), "bot")
    weights = entry.path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))

    checks = registry.verify()

    assert [(c.version, c.ok) for c in checks] == [(1, True), (2, False)]
    (problem,) = checks[1].problems
    assert problem.startswith("adapter_model.safetensors: sha256")


def test_cli_publish_promote_list_show_rollback_as_json(
    gated_adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = ["--registry", str(tmp_path / "reg"), "--json"]

    def run(*argv: str) -> Any:
        assert main([*argv, *reg]) == 0
        return json.loads(capsys.readouterr().out)

    assert run("registry", "publish", str(make_adapter(gated_adapter, tmp_path / "a")), "--name", "bot")["version"] == 1
    assert run("registry", "promote", "bot@1") == {"name": "bot", "live": 1, "history": [], "previous": None}
    run("registry", "publish", str(make_adapter(gated_adapter, tmp_path / "b")), "--name", "bot")
    assert run("registry", "promote", "bot@2")["history"] == [1]
    listed = run("registry", "list")
    assert [(e["version"], e["live"]) for e in listed["entries"]] == [(1, False), (2, True)]
    assert run("registry", "show", "bot")["version"] == 2
    assert run("registry", "rollback", "bot")["live"] == 1
    assert run("registry", "show", "bot@2")["live"] is False
    assert run("registry", "remove", "bot@2") == {"name": "bot", "version": 2, "removed": True}
    assert run("registry", "verify") == {
        "registry": str(tmp_path / "reg"),
        "ok": True,
        "results": [{"name": "bot", "version": 1, "ok": True, "problems": [], "signature": "unsigned"}],
    }


def test_cli_refusals_exit_with_one_message(
    gated_adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = ["--registry", str(tmp_path / "reg")]
    blocked = str(make_adapter(gated_adapter, tmp_path / "blocked", "block"))
    assert main(["registry", "publish", blocked, "--name", "bot", *reg]) == 3  # the gate's exit code
    assert main(["registry", "publish", blocked, "--name", "../x", *reg]) == 2
    assert main(["registry", "promote", "bot", *reg]) == 2  # no @VERSION
    assert main(["registry", "show", "bot@zero", *reg]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "gate blocked it" in err and "'../x' is not allowed" in err
    assert "names no version" in err and "version 'zero'" in err


def test_cli_verify_exits_1_and_names_the_changed_file(
    gated_adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry(tmp_path / "reg")
    entry = registry.publish(make_adapter(gated_adapter, tmp_path / "a"), "bot")
    (entry.path / "adapter_config.json").write_text("{}")
    assert main(["registry", "verify", "--registry", str(registry.root), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False
    assert "adapter_config.json: sha256" in result["results"][0]["problems"][0]


@pytest.fixture
def signing_registry(tmp_path: Path) -> tuple[Registry, Path]:
    """A registry that requires signatures, and the private key whose public half it holds."""
    private_key, public_key = generate_keypair(tmp_path / "keys")
    registry = Registry(tmp_path / "signed-registry")
    registry.init(require_signatures=True, public_key=public_key)
    return registry, private_key


def test_require_signatures_refuses_an_unsigned_adapter(
    signing_registry: tuple[Registry, Path], gated_adapter: Path, tmp_path: Path
) -> None:
    registry, _ = signing_registry
    with pytest.raises(SignatureError, match="requires signatures; refusing to publish .* is not signed"):
        registry.publish(make_adapter(gated_adapter, tmp_path / "unsigned"), "bot")
    assert registry.list() == []


def test_require_signatures_accepts_a_signed_adapter_and_verify_checks_it(
    signing_registry: tuple[Registry, Path], gated_adapter: Path, tmp_path: Path
) -> None:
    registry, private_key = signing_registry
    adapter = make_adapter(gated_adapter, tmp_path / "signed")
    sign_adapter(adapter, private_key)
    entry = registry.publish(adapter, "bot")
    assert entry.signed and "model.sig" in entry.files
    assert [(c.ok, c.signature) for c in registry.verify()] == [(True, "verified")]


def test_require_signatures_refuses_an_adapter_changed_after_signing(
    signing_registry: tuple[Registry, Path], gated_adapter: Path, tmp_path: Path
) -> None:
    registry, private_key = signing_registry
    adapter = make_adapter(gated_adapter, tmp_path / "signed")
    sign_adapter(adapter, private_key)
    make_adapter(gated_adapter, tmp_path / "scratch", "block")  # a manifest edit after signing:
    shutil.copy(tmp_path / "scratch" / MANIFEST_NAME, adapter / MANIFEST_NAME)
    with pytest.raises(GateBlocked):
        registry.publish(adapter, "bot")
    with pytest.raises(SignatureError, match=f"{MANIFEST_NAME}"):
        registry.publish(adapter, "bot", force=True)  # force lifts the gate, never the signature


def test_verify_fails_a_signed_version_whose_file_changed(
    signing_registry: tuple[Registry, Path], gated_adapter: Path, tmp_path: Path
) -> None:
    registry, private_key = signing_registry
    adapter = make_adapter(gated_adapter, tmp_path / "signed")
    sign_adapter(adapter, private_key)
    entry = registry.publish(adapter, "bot")
    (entry.path / "adapter_config.json").write_text("{}")
    (check,) = registry.verify()
    assert check.signature == "failed"
    assert [p.split(":")[0] for p in check.problems] == ["adapter_config.json", "signature"]


def test_init_refuses_require_signatures_without_a_key(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="needs the key.*public_key= / --pub"):
        Registry(tmp_path / "r").init(require_signatures=True)
    assert not (tmp_path / "r").exists()


def test_init_refuses_to_stop_requiring_signatures_without_force(signing_registry: tuple[Registry, Path]) -> None:
    registry, _ = signing_registry
    with pytest.raises(RegistryError, match="stop requiring signatures and drop its public key.*--force"):
        registry.init()
    assert registry.settings().require_signatures
    assert not registry.init(force=True).require_signatures
