"""Tenants: who may call the server, with which adapters, under which API key.

tenants.yaml holds only the sha256 of each key (`api_key_sha256`); the clear key is printed once
by `loraforge tenants add` and never written. Keys are 256 random bits, so a plain sha256 is
enough: there is no password to guess, and a fast hash keeps authentication cheap per request.
Format and key handling: docs/serve-security.md.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loraforge.errors import ConfigError
from loraforge.files import write_text_atomic
from loraforge.ship.registry_files import exclusive_lock, valid_name

KEY_PREFIX = "lf-"  # tells a leaked loraforge key apart in logs and secret scanners
KEY_BYTES = 32  # 256 bits from secrets.token_urlsafe
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
FIELDS = ("api_key_sha256", "adapters", "base", "max_concurrent")
ADD_HINT = "loraforge tenants add NAME --adapters a,b (add_tenant)"


@dataclass(frozen=True)
class Tenant:
    name: str
    adapters: frozenset[str]
    base: bool  # may use the bare base
    max_concurrent: int | None  # None: the server's default

    def may_use(self, adapter_name: str) -> bool:
        """Whether the tenant may call ADAPTER (any of its versions: NAME@3 counts as NAME)."""
        return adapter_name.partition("@")[0] in self.adapters


@dataclass(frozen=True)
class _Record:
    tenant: Tenant
    key_sha256: str


class Tenants:
    """The tenants of one tenants.yaml, as read at load time (a snapshot; load again to see edits)."""

    def __init__(self, records: list[_Record], path: Path | None = None) -> None:
        self._records = list(records)
        self.path = path

    @classmethod
    def load(cls, path: Path) -> Tenants:
        """Read and check tenants.yaml; ConfigError naming the file and each bad tenant and key."""
        path = Path(path)
        return cls(_parse(_read_yaml(path), path), path)

    def authenticate(self, api_key: str | None) -> Tenant | None:
        """The tenant whose key this is, or None. Compares sha256 digests in constant time, and
        compares against every tenant, so the time taken says nothing about which one matched."""
        if not api_key:
            return None
        digest = hash_key(api_key)
        found: Tenant | None = None
        for record in self._records:
            if hmac.compare_digest(digest, record.key_sha256):
                found = record.tenant
        return found

    def get(self, name: str) -> Tenant | None:
        return next((r.tenant for r in self._records if r.tenant.name == name), None)

    def __iter__(self) -> Iterator[Tenant]:
        return iter([r.tenant for r in self._records])

    def __len__(self) -> int:
        return len(self._records)


def hash_key(api_key: str) -> str:
    """sha256 hex of the clear key: what tenants.yaml stores."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def add_tenant(path: Path, name: str, adapters: list[str], base: bool = True, rotate: bool = False) -> str:
    """Create or (rotate=True) re-key tenant NAME in tenants.yaml (atomic write); returns the clear key, shown once.

    Rotating replaces the key (the old one stops working at the server's next load of the file)
    and sets the adapters and base access to what is given; max_concurrent is kept."""
    path = Path(path)
    problems = _name_problems(name, adapters)
    if problems:
        raise ConfigError(problems, source=str(path))
    with exclusive_lock(path.with_name(f".{path.name}.lock")):  # two adds at once must not lose one
        document = _read_yaml(path) if path.exists() else {"tenants": {}}
        _parse(document, path)  # refuse to rewrite a file that is already broken
        tenants: dict[str, Any] = document.setdefault("tenants", {}) or {}
        document["tenants"] = tenants
        existing = tenants.get(name)
        if existing is not None and not rotate:
            raise ConfigError(
                [f"tenant {name!r} already exists; pass rotate=True (--rotate) to give it a new key"], str(path)
            )
        if existing is None and rotate:
            raise ConfigError(
                [f"tenant {name!r} is not in the file, so there is no key to rotate; drop --rotate"], str(path)
            )
        key = new_key()
        entry: dict[str, Any] = {"api_key_sha256": hash_key(key), "adapters": sorted(set(adapters)), "base": base}
        if existing is not None and existing.get("max_concurrent") is not None:
            entry["max_concurrent"] = existing["max_concurrent"]
        tenants[name] = entry
        _parse(document, path)  # what is written must load
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        write_text_atomic(path, yaml.dump(document, Dumper=dumper, sort_keys=False, default_flow_style=False))
    return key


def _name_problems(name: str, adapters: list[str]) -> list[str]:
    problems = []
    if not TENANT_NAME.fullmatch(name):
        problems.append(
            f"tenant name {name!r}: use 1-64 characters of letters, digits, '.', '_' and '-', starting with a "
            "letter or digit"
        )
    problems += [
        f"tenant {name!r}: adapter {a!r} is not a registry name (a-z, 0-9, '.', '_', '-'; no paths)"
        for a in adapters
        if not valid_name(a)
    ]
    return problems


# libyaml where PyYAML has it: a 100-tenant file parsed in ~25 ms pure-Python, ~3 ms with libyaml (Zen 4)
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[misc]  # a base chosen at import time
    """safe_load keeps the last of two equal keys silently; a tenant listed twice is an error here."""


def _construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read it ({exc.strerror or exc}); create it with {ADD_HINT}"], str(path)) from exc
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  # a (C)SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {' '.join(str(exc).split())}"], str(path)) from exc


def _parse(document: Any, path: Path) -> list[_Record]:
    """Every problem at once (the user fixes the file in one pass), each naming its tenant and key."""
    shape = "one mapping `tenants: {NAME: {api_key_sha256: HEX, adapters: [...], base: true}}`"
    if not isinstance(document, dict) or set(document) != {"tenants"}:
        raise ConfigError([f"the file must be {shape}; make one with {ADD_HINT}"], str(path))
    if not isinstance(document["tenants"], dict | None):
        raise ConfigError([f"`tenants:` must map tenant names to their fields: {shape}"], str(path))
    problems: list[str] = []
    records: list[_Record] = []
    owners: dict[str, str] = {}
    for name, fields in (document["tenants"] or {}).items():
        if not isinstance(name, str):  # YAML reads `123:` as a number; add_tenant would add a second "123"
            problems.append(f"tenant {name!r}: a tenant name is a string; quote it ('{name}':)")
            continue
        record = _parse_tenant(name, fields, problems)
        if record is None:
            continue
        other = owners.setdefault(record.key_sha256, record.tenant.name)
        if other != record.tenant.name:
            problems.append(f"tenants {other!r} and {record.tenant.name!r} have the same api_key_sha256; rotate one")
        records.append(record)
    if problems:
        raise ConfigError(problems, str(path))
    return records


def _parse_tenant(name: str, fields: Any, problems: list[str]) -> _Record | None:
    where = f"tenant {name!r}"
    before = len(problems)
    if not TENANT_NAME.fullmatch(name):
        problems.append(f"{where}: a name is 1-64 letters, digits, '.', '_' and '-', starting with a letter or digit")
    if not isinstance(fields, dict):
        problems.append(f"{where}: expected a mapping of {', '.join(FIELDS)}")
        return None
    problems += [f"{where}: unknown field {key!r} (fields: {', '.join(FIELDS)})" for key in fields if key not in FIELDS]
    digest = fields.get("api_key_sha256")
    if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
        problems.append(
            f"{where}: api_key_sha256 must be 64 lower-case hex digits (the sha256 of the key, never the key); "
            f"re-key it with loraforge tenants add {name} --adapters ... --rotate"
        )
    adapters = fields.get("adapters", [])
    if not isinstance(adapters, list) or not all(isinstance(a, str) and valid_name(a) for a in adapters):
        problems.append(f"{where}: adapters must be a list of registry names, e.g. [support-bot]")
    base = fields.get("base", True)
    if not isinstance(base, bool):
        problems.append(f"{where}: base must be true or false (may the tenant use the bare base)")
    limit = fields.get("max_concurrent")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        problems.append(f"{where}: max_concurrent must be a whole number from 1, or left out for the default")
    if len(problems) > before:
        return None
    tenant = Tenant(name, frozenset(adapters), base, limit)
    return _Record(tenant, str(digest))
