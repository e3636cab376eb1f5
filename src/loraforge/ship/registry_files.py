"""The registry's small parts: name rules, NAME@VERSION references, the per-name lock, file hashes.

Kept apart from `registry.py` so the operations there read as the steps they are.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loraforge.errors import RegistryError
from loraforge.files import sha256_file
from loraforge.ship.registry_entry import RegistrySettings

# A name is one path component: lower case, no separators, cannot start with "." (so never "..").
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def check_name(name: str, root: Path) -> str:
    """Return `name` when it may name an adapter in the registry at `root`; else raise RegistryError."""
    # fullmatch, not match with "$": "$" also matches before a trailing newline
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise RegistryError(
            f"registry {root}: adapter name {name!r} is not allowed; a name (name= / --name, NAME in "
            "NAME@VERSION) is 1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit "
            "(no paths, no upper case), e.g. support-bot"
        )
    return name


def parse_ref(ref: str, root: Path) -> tuple[str, int | None]:
    """Split NAME[@VERSION] into a checked name and a version (None when none is given)."""
    name, sep, version_text = ref.partition("@")
    check_name(name, root)
    if not sep:
        return name, None
    if not version_text.isdigit() or int(version_text) < 1:
        raise RegistryError(
            f"registry {root}: {ref!r} has version {version_text!r}; a version is a whole number from 1, e.g. {name}@1"
        )
    return name, int(version_text)


def parse_versioned_ref(ref: str, root: Path) -> tuple[str, int]:
    """Split NAME@VERSION, refusing a bare NAME (promote and remove act on one version)."""
    name, version = parse_ref(ref, root)
    if version is None:
        raise RegistryError(
            f"registry {root}: {ref!r} names no version; write NAME@VERSION, e.g. {name}@1 "
            "(`loraforge registry list` shows the versions)"
        )
    return name, version


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path` while inside; another process waits at the door.

    The kernel drops the lock when the process dies, so a killed publisher never leaves the name
    locked. The lock file itself stays (deleting it would let two processes lock two different files).
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def hash_tree(directory: Path) -> dict[str, str]:
    """sha256 of every regular file under `directory`, keyed by its POSIX path relative to it."""
    return {
        path.relative_to(directory).as_posix(): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def read_json_object(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON object read from `path`; a RegistryError naming the file and `fix` when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read the {what} ({exc}); {fix}") from exc
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: the {what} is not a JSON object; {fix}")
    return data


def file_problems(recorded: dict[str, str], found: dict[str, str]) -> list[str]:
    problems = [f"{path}: missing" for path in sorted(recorded.keys() - found.keys())]
    problems += [f"{path}: not in the published entry" for path in sorted(found.keys() - recorded.keys())]
    problems += [
        f"{path}: sha256 {found[path][:12]}, published {recorded[path][:12]} (changed after publishing)"
        for path in sorted(recorded.keys() & found.keys())
        if recorded[path] != found[path]
    ]
    return problems


def valid_name(name: str) -> bool:
    try:
        check_name(name, Path())
    except RegistryError:
        return False
    return True


def clear_leftovers(versions: Path) -> None:
    """Remove what a killed publish or remove left; only the lock holder writes these, so none is in use."""
    for path in versions.iterdir():
        if ".tmp-" in path.name or ".removed-" in path.name:
            shutil.rmtree(path, ignore_errors=True)


def read_public_key(path: Path, root: Path) -> bytes:
    try:
        data = path.expanduser().read_bytes()
    except OSError as exc:
        raise RegistryError(
            f"registry {root}: cannot read public_key= / --pub {path} ({exc}); pass a PEM public key file"
        ) from exc
    if b"-----BEGIN PUBLIC KEY-----" not in data:
        raise RegistryError(
            f"registry {root}: public_key= / --pub {path} is not a PEM public key (no BEGIN PUBLIC KEY line); "
            "pass the .pub.pem file the key pair was made with"
        )
    return data


def refuse_loosening(current: RegistrySettings, require_signatures: bool, key_bytes: bytes | None) -> None:
    old_key = current.public_key.read_bytes() if current.public_key and current.public_key.is_file() else None
    changes = []
    if current.require_signatures and not require_signatures:
        changes.append("stop requiring signatures")
    if old_key is not None and old_key != key_bytes:
        changes.append("drop its public key" if key_bytes is None else "replace its public key")
    if changes:
        raise RegistryError(
            f"registry {current.root} requires signatures={current.require_signatures}; this would "
            f"{' and '.join(changes)}; pass the same settings, or force=True / --force to change them"
        )
