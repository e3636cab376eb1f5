"""What the registry stores: its settings, an entry per published version, the live pointer and
`verify`'s findings, each with the JSON shape the `--json` output uses (stable keys)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGISTRY_FORMAT = 1
SETTINGS_NAME = "registry.json"
PUBLIC_KEY_NAME = "public_key.pem"
ADAPTER_SUBDIR = "adapter"  # versions/N/adapter is the adapter exactly as published; entry.json sits beside it
ENTRY_NAME = "entry.json"
LIVE_NAME = "live.json"
COUNTER_NAME = "name.json"  # the highest version ever given, so a removed version's number is never reused


@dataclass(frozen=True)
class RegistrySettings:
    root: Path
    require_signatures: bool = False
    public_key: Path | None = None  # the registry's own copy of the key, under root

    def as_dict(self) -> dict[str, Any]:
        return {
            "registry": str(self.root),
            "require_signatures": self.require_signatures,
            "public_key": None if self.public_key is None else str(self.public_key),
        }


@dataclass(frozen=True)
class Entry:
    """One published version: what was published, from where, and what the gate said about it."""

    name: str
    version: int
    published_at: str
    source: str
    base_fingerprint: str | None
    verdict: str | None
    forced: bool
    forced_reason: str | None
    signed: bool
    files: dict[str, str]
    path: Path  # the adapter directory (versions/N/adapter)
    live: bool = False

    def record(self) -> dict[str, Any]:
        """entry.json: everything but where it lies and whether it is live (those are read, not stored)."""
        return {
            "format": REGISTRY_FORMAT,
            "name": self.name,
            "version": self.version,
            "published_at": self.published_at,
            "source": self.source,
            "base_fingerprint": self.base_fingerprint,
            "verdict": self.verdict,
            "forced": self.forced,
            "forced_reason": self.forced_reason,
            "signed": self.signed,
            "files": dict(self.files),
        }

    def as_dict(self) -> dict[str, Any]:
        return {**self.record(), "path": str(self.path), "live": self.live}


@dataclass(frozen=True)
class LiveState:
    """A name's live pointer after promote or rollback; `previous` was live before the call."""

    name: str
    version: int | None
    history: list[int] = field(default_factory=list)
    previous: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "live": self.version, "history": list(self.history), "previous": self.previous}


@dataclass(frozen=True)
class VersionCheck:
    """`verify`'s finding for one version; `signature` is verified, unsigned, not checked or failed."""

    name: str
    version: int
    problems: list[str]
    signature: str

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ok": self.ok,
            "problems": list(self.problems),
            "signature": self.signature,
        }
