"""The adapter registry: a local directory of named, versioned, gated adapters with a `live` pointer.

Serve reads adapters from here only (`Registry.resolve(name)`). Layout, lock and pointer:
docs/ship-registry.md. Every change happens under the name's file lock and lands with a rename, so
a reader sees the old state or the new one, and a killed process leaves no half-published version.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from loraforge.errors import GateBlocked, ModelError, RegistryError, SignatureError, SigningKeyError
from loraforge.files import loraforge_home, write_bytes_atomic, write_json_atomic
from loraforge.models import read_manifest
from loraforge.ship.registry_entry import (
    ADAPTER_SUBDIR,
    COUNTER_NAME,
    ENTRY_NAME,
    LIVE_NAME,
    PUBLIC_KEY_NAME,
    REGISTRY_FORMAT,
    SETTINGS_NAME,
    Entry,
    LiveState,
    RegistrySettings,
    VersionCheck,
)
from loraforge.ship.registry_files import (
    check_name,
    clear_leftovers,
    exclusive_lock,
    file_problems,
    hash_tree,
    read_json_object,
    read_public_key,
    refuse_loosening,
    valid_name,
)
from loraforge.ship.signing import SIGNATURE_NAME, verify_adapter

__all__ = ["Entry", "LiveState", "Registry", "RegistrySettings", "VersionCheck"]


class Registry:
    """A registry directory; every method is also a `loraforge registry` command."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()

    @classmethod
    def default(cls) -> Registry:
        """$LORAFORGE_HOME/registry, what `--registry` defaults to."""
        return cls(loraforge_home() / "registry")

    def settings(self) -> RegistrySettings:
        path = self.root / SETTINGS_NAME
        if not path.is_file():
            return RegistrySettings(self.root)
        data = read_json_object(path, "registry settings", "run `loraforge registry init` again (Registry.init)")
        key = data.get("public_key")
        return RegistrySettings(
            self.root, bool(data.get("require_signatures")), None if key is None else self.root / key
        )

    def init(
        self, require_signatures: bool = False, public_key: Path | None = None, force: bool = False
    ) -> RegistrySettings:
        """Create the registry (or change its settings); keep a copy of the public key under the root.

        Loosening an existing registry (no longer requiring signatures, dropping or replacing its
        key) needs force=True: a registry that required signatures may hold versions that rely on it.
        """
        if require_signatures and public_key is None:
            raise RegistryError(
                f"registry {self.root}: require_signatures=True / --require-signatures needs the key that "
                "verifies them: pass public_key= / --pub PUB.pem"
            )
        key_bytes = None if public_key is None else read_public_key(Path(public_key), self.root)
        with exclusive_lock(self.root / ".lock"):
            current = self.settings() if (self.root / SETTINGS_NAME).is_file() else None
            if current is not None and not force:
                refuse_loosening(current, require_signatures, key_bytes)
            key_path = self.root / PUBLIC_KEY_NAME
            if key_bytes is not None:
                write_bytes_atomic(key_path, key_bytes)
            write_json_atomic(
                self.root / SETTINGS_NAME,
                {
                    "format": REGISTRY_FORMAT,
                    "require_signatures": require_signatures,
                    "public_key": None if key_bytes is None else PUBLIC_KEY_NAME,
                },
            )
            if key_bytes is None:
                key_path.unlink(missing_ok=True)
        return self.settings()

    def publish(self, adapter_dir: Path, name: str, force: bool = False) -> Entry:
        """Copy `adapter_dir` in as NAME's next version, atomically, under NAME's lock.

        Refuses an adapter the gate blocked or that carries no gate result unless force=True
        (recorded in the entry with the reason), and, when the registry requires signatures, one
        that is unsigned or whose signature does not verify (force does not lift that).
        """
        check_name(name, self.root)
        source = Path(adapter_dir).expanduser().absolute()
        if not (source / "adapter_config.json").is_file():
            raise RegistryError(
                f"registry {self.root}: {source} (adapter_dir= / ADAPTER_DIR) has no adapter_config.json; "
                "pass an adapter directory such as OUTPUT/adapter"
            )
        settings = self.settings()
        self._admit(source, source, name, force, settings)  # refuse early, before anything is created
        self._ensure_settings()
        name_dir = self.root / name
        versions = name_dir / "versions"
        with exclusive_lock(name_dir / ".lock"):
            versions.mkdir(parents=True, exist_ok=True)
            clear_leftovers(versions)
            settings = self.settings()  # again under the lock: an `init` may have changed it meanwhile
            version = self._last_version(name) + 1
            tmp = Path(tempfile.mkdtemp(prefix=f"{version}.tmp-", dir=versions))
            try:
                os.chmod(tmp, 0o755)  # mkdtemp makes 0700; serve may run as another user
                shutil.copytree(source, tmp / ADAPTER_SUBDIR, symlinks=False)
                # the copy is what gets stored, so the copy is what is judged and verified
                verdict, forced_reason, signed, fingerprint = self._admit(
                    tmp / ADAPTER_SUBDIR, source, name, force, settings
                )
                entry = Entry(
                    name=name,
                    version=version,
                    published_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    source=str(source),
                    base_fingerprint=fingerprint,
                    verdict=verdict,
                    forced=forced_reason is not None,
                    forced_reason=forced_reason,
                    signed=signed,
                    files=hash_tree(tmp / ADAPTER_SUBDIR),
                    path=versions / str(version) / ADAPTER_SUBDIR,
                )
                write_json_atomic(tmp / ENTRY_NAME, entry.record())
                os.rename(tmp, versions / str(version))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            write_json_atomic(name_dir / COUNTER_NAME, {"name": name, "last_version": version})
        return entry

    def show(self, name: str, version: int | None = None) -> Entry:
        """One version's entry; without a version, the live one (the latest when none is live)."""
        check_name(name, self.root)
        numbers = self._versions(name)
        if not numbers:
            raise self._unknown_name(name)
        if version is None:
            live = self._read_live(name)["version"]
            version = live if live is not None else numbers[-1]
        return self._entry(name, version)

    def promote(self, name: str, version: int) -> LiveState:
        """Point NAME's `live` at VERSION; the version it replaces goes on the history rollback uses."""
        with self._lock_existing(name):
            self._entry(name, version)  # refuse an unknown version before touching the pointer
            live = self._read_live(name)
            previous, history = live["version"], list(live["history"])
            if previous != version:
                if previous is not None:
                    history.append(previous)
                self._write_live(name, version, history)
        return LiveState(name, version, history, previous)

    def rollback(self, name: str) -> LiveState:
        """Make the version that was live before the current one live again."""
        with self._lock_existing(name):
            live = self._read_live(name)
            history = list(live["history"])
            if not history:
                raise RegistryError(
                    f"registry {self.root}: {name} has no earlier live version to roll back to (live: "
                    f"{live['version']}); promote a version instead: loraforge registry promote {name}@VERSION "
                    "(Registry.promote)"
                )
            target = history.pop()
            self._write_live(name, target, history)
        return LiveState(name, target, history, live["version"])

    def remove(self, name: str, version: int) -> Entry:
        """Delete one version (never the live one); its number is not given out again."""
        name_dir = self.root / name
        with self._lock_existing(name):
            entry = self._entry(name, version)
            live = self._read_live(name)
            if live["version"] == version:
                raise RegistryError(
                    f"registry {self.root}: {name}@{version} is live and cannot be removed; promote another "
                    f"version first (loraforge registry promote {name}@OTHER, Registry.promote), then remove it"
                )
            if version in live["history"]:  # first, so rollback never points at a missing version
                self._write_live(name, live["version"], [v for v in live["history"] if v != version])
            doomed = Path(tempfile.mkdtemp(prefix=f".{version}.removed-", dir=name_dir / "versions"))
            os.replace(name_dir / "versions" / str(version), doomed / "v")  # gone from view in one rename
            shutil.rmtree(doomed, ignore_errors=True)
        return entry

    def verify(self) -> builtins.list[VersionCheck]:
        """Check every version: files match their recorded sha256s, the manifest loads, and the
        signature verifies (where the registry requires signatures or the version carries model.sig)."""
        settings = self.settings()
        return [self._check(name, version, settings) for name in self._names() for version in self._versions(name)]

    def resolve(self, name: str, version: int | None = None) -> Path:
        """The adapter directory serve loads for NAME: the live version's (or VERSION's, when given)."""
        check_name(name, self.root)
        if version is None:
            if not self._versions(name):
                raise self._unknown_name(name)
            version = self._read_live(name)["version"]
            if version is None:
                raise RegistryError(
                    f"registry {self.root}: {name} has no live version; promote one: loraforge registry "
                    f"promote {name}@VERSION (Registry.promote)"
                )
        return self._entry(name, version).path

    def list(self) -> builtins.list[Entry]:
        """Every version of every name, by name then version."""
        return [self._entry(name, version) for name in self._names() for version in self._versions(name)]

    def _lock_existing(self, name: str) -> contextlib.AbstractContextManager[None]:
        """NAME's lock, refusing a name that was never published (so no directory appears for it)."""
        check_name(name, self.root)
        if not self._versions(name):
            raise self._unknown_name(name)
        return exclusive_lock(self.root / name / ".lock")

    def _ensure_settings(self) -> None:
        """A registry that publish creates says what it is: registry.json with the defaults."""
        with exclusive_lock(self.root / ".lock"):
            if not (self.root / SETTINGS_NAME).is_file():
                settings = {"format": REGISTRY_FORMAT, "require_signatures": False, "public_key": None}
                write_json_atomic(self.root / SETTINGS_NAME, settings)

    # ----- reading the layout

    def _names(self) -> builtins.list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and valid_name(p.name) and self._versions(p.name)
        )

    def _versions(self, name: str) -> builtins.list[int]:
        versions = self.root / name / "versions"
        if not versions.is_dir():
            return []
        return sorted(int(p.name) for p in versions.iterdir() if p.name.isdigit() and p.is_dir())

    def _last_version(self, name: str) -> int:
        counter = self.root / name / COUNTER_NAME
        recorded = 0
        if counter.is_file():
            highest = max(self._versions(name), default=0)
            fix = f"it holds the highest version published; set last_version to at least {highest}"
            recorded = int(read_json_object(counter, "version counter", fix).get("last_version", 0))
        return max([recorded, *self._versions(name)])

    def _entry(self, name: str, version: int) -> Entry:
        version_dir = self.root / name / "versions" / str(version)
        if not version_dir.is_dir():
            known = ", ".join(str(v) for v in self._versions(name)) or "none"
            raise RegistryError(
                f"registry {self.root}: {name}@{version} does not exist (versions of {name}: {known}); "
                "`loraforge registry list` shows what is published"
            )
        fix = f"the entry is damaged: remove {name}@{version} and publish the adapter again"
        data = read_json_object(version_dir / ENTRY_NAME, "registry entry", fix)
        try:
            return Entry(
                name=name,
                version=version,
                published_at=str(data["published_at"]),
                source=str(data["source"]),
                base_fingerprint=data.get("base_fingerprint"),
                verdict=data.get("verdict"),
                forced=bool(data.get("forced")),
                forced_reason=data.get("forced_reason"),
                signed=bool(data.get("signed")),
                files=dict(data["files"]),
                path=version_dir / ADAPTER_SUBDIR,
                live=self._read_live(name)["version"] == version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"{version_dir / ENTRY_NAME}: missing or bad field {exc}; {fix}") from exc

    def _read_live(self, name: str) -> dict[str, Any]:
        path = self.root / name / LIVE_NAME
        if not path.is_file():
            return {"version": None, "history": []}
        data = read_json_object(
            path, "live pointer", f"promote a version again: loraforge registry promote {name}@VERSION"
        )
        return {"version": data.get("version"), "history": [int(v) for v in data.get("history", [])]}

    def _write_live(self, name: str, version: int, history: builtins.list[int]) -> None:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        write_json_atomic(self.root / name / LIVE_NAME, {"version": version, "history": history, "updated_at": now})

    def _unknown_name(self, name: str) -> RegistryError:
        known = ", ".join(self._names()) or "none"
        return RegistryError(
            f"registry {self.root}: no adapter named {name} (names: {known}); publish one with "
            f"loraforge registry publish ADAPTER_DIR --name {name} (Registry.publish), or pass the right --registry"
        )

    # ----- judging an adapter

    def _admit(
        self, adapter: Path, source: Path, name: str, force: bool, settings: RegistrySettings
    ) -> tuple[str | None, str | None, bool, str | None]:
        """(verdict, the reason force was needed or None, signed, base fingerprint), or a refusal:
        GateBlocked (exit 3) for a blocked adapter, SignatureError (exit 4) for a bad signature."""
        try:
            manifest = read_manifest(adapter)
        except ModelError as exc:
            raise RegistryError(f"registry {self.root}: cannot publish {source} as {name}: {exc}") from exc
        gate = (manifest or {}).get("eval")
        verdict = gate.get("verdict") if isinstance(gate, dict) else None
        reason = None
        if isinstance(gate, dict) and verdict == "block":
            reason = f"the eval gate blocked it ({'; '.join(map(str, gate.get('reasons', []))) or 'no reasons'})"
        elif verdict != "pass":
            reason = "it carries no gate result (loraforge.json has no eval.verdict)"
        if reason is not None and not force:
            kind = GateBlocked if verdict == "block" else RegistryError
            raise kind(
                f"registry {self.root}: refusing to publish {source} as {name}: {reason}; gate it "
                "(loraforge eval CONFIG --adapter DIR) and fix what it reports, or publish anyway with "
                "force=True / --force (recorded in the entry)"
            )
        if settings.require_signatures:
            what = f"registry {self.root} requires signatures; refusing to publish {source} as {name}"
            self._verify_signature(adapter, settings, what)
        fingerprint = ((manifest or {}).get("base") or {}).get("fingerprint")
        return verdict, reason, (adapter / SIGNATURE_NAME).is_file(), fingerprint

    def _verify_signature(self, adapter: Path, settings: RegistrySettings, what: str) -> None:
        """Raise SignatureError, prefixed with `what`, unless model.sig verifies under the registry's key."""
        key = settings.public_key
        if key is None or not key.is_file():
            raise RegistryError(
                f"{what}: the registry has no public key ({self.root / PUBLIC_KEY_NAME}); set it with "
                "loraforge registry init --require-signatures --pub PUB.pem (Registry.init(public_key=...))"
            )
        try:
            verify_adapter(adapter, key)
        except SignatureError as exc:
            raise SignatureError(
                f"{what}: {exc}", reason=exc.reason, changed=exc.changed, added=exc.added, missing=exc.missing
            ) from exc

    def _check(self, name: str, version: int, settings: RegistrySettings) -> VersionCheck:
        try:
            entry = self._entry(name, version)
        except RegistryError as exc:
            return VersionCheck(name, version, [str(exc)], "not checked")
        problems = file_problems(entry.files, hash_tree(entry.path))
        try:
            read_manifest(entry.path)
        except ModelError as exc:
            problems.append(f"manifest: {exc}")
        signed = (entry.path / SIGNATURE_NAME).is_file()
        signature = "unsigned" if not signed else "not checked"  # not checked: signed, but no key to check with
        if settings.require_signatures or (signed and settings.public_key is not None):
            try:
                self._verify_signature(entry.path, settings, f"{name}@{version}")
                signature = "verified"
            except (SignatureError, SigningKeyError, RegistryError) as exc:
                signature = "failed"
                problems.append(f"signature: {exc}")
        return VersionCheck(name, version, problems, signature)
