"""Sign adapters with OpenSSF model signing (model-signing 1.1.1) and verify them, naming what differs.

`ADAPTER_DIR/model.sig` is a Sigstore bundle around a DSSE envelope whose in-toto statement lists
every file of the adapter with its SHA-256 (docs/ship-signing.md). We hash the way the library's own
CLI does (per-file SHA-256; model.sig and git metadata left out), so
`model_signing verify key ADAPTER_DIR --signature ADAPTER_DIR/model.sig --public_key PUB.pem`
accepts what `sign_adapter` writes. Key-based signing and verifying use no network.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from model_signing import hashing, signing, verifying

from loraforge.config import ShipSpec
from loraforge.errors import ModelError, SignatureError, SigningKeyError
from loraforge.files import write_bytes_atomic

SIGNATURE_NAME = "model.sig"
PRIVATE_KEY_NAME = "private.pem"
PUBLIC_KEY_NAME = "public.pem"
# model-signing accepts only these curves (Sigstore's key specs); keygen writes P-256.
SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")


@dataclass(frozen=True)
class VerifyResult:
    adapter_dir: Path
    signature: Path
    files: tuple[str, ...]  # every file the signature covers, each matching its signed digest
    key_id: str  # sha256 of the public key's PEM: the hint model-signing records in the bundle

    def as_dict(self) -> dict[str, Any]:
        return {
            "adapter_dir": str(self.adapter_dir),
            "signature": str(self.signature),
            "files": list(self.files),
            "key_id": self.key_id,
            "verified": True,
        }


@dataclass(frozen=True)
class SigningKey:
    path: Path
    password: bytes | None = None


def signing_key(spec: ShipSpec) -> SigningKey | None:
    """`ship.key` with the password read from `ship.password_env`, checked to load (so a run fails
    before training, not after it); None when ship.key is unset."""
    if spec.key is None:
        return None
    password = None if spec.password_env is None else password_from_env(spec.password_env, "ship.password_env")
    _load_private_key(spec.key, password, flag="ship.key")
    return SigningKey(spec.key, password)


def password_from_env(env_var: str, flag: str = "--password-env") -> bytes:
    """A key's password from the environment: argv and config files are readable by others."""
    value = os.environ.get(env_var)
    if not value:
        raise SigningKeyError(f"{flag} {env_var}: the environment variable is unset or empty; export it first")
    return value.encode("utf-8")


def generate_keypair(key_dir: Path, password: bytes | None = None, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write an EC P-256 pair: `key_dir/private.pem` (PKCS#8, mode 0600, encrypted when `password`
    is given) and `key_dir/public.pem`. Refuses to replace an existing key unless `overwrite`."""
    private_path, public_path = key_dir / PRIVATE_KEY_NAME, key_dir / PUBLIC_KEY_NAME
    existing = [str(p) for p in (private_path, public_path) if p.exists()]
    if existing and not overwrite:
        raise SigningKeyError(
            f"{', '.join(existing)} already exists: replacing a key orphans every signature made with it; "
            "keep it, pick another key_dir (DIR), or pass overwrite=True (--force)"
        )
    if password is not None and not password:
        raise SigningKeyError("password is empty: pass None (no --password-env) for an unencrypted key")
    private_key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    private_pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    write_bytes_atomic(private_path, private_pem)  # mkstemp creates the temp file 0600, kept by the rename
    os.chmod(private_path, 0o600)
    write_bytes_atomic(public_path, _public_pem(private_key.public_key()))
    os.chmod(public_path, 0o644)  # the public half is meant to be handed out
    return private_path, public_path


def sign_adapter(adapter_dir: Path, private_key: Path, password: bytes | None = None) -> Path:
    """Sign every file in `adapter_dir` (but model.sig) into `adapter_dir/model.sig`, atomically.

    The signature is written to a temp file beside the adapter (outside what is hashed) and renamed
    in, so a killed run leaves the old signature or the new one."""
    _require_dir(adapter_dir)
    _load_private_key(private_key, password)  # our message for a wrong password or key kind, not the library's
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{adapter_dir.name}.{SIGNATURE_NAME}.", suffix=".tmp", dir=adapter_dir.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        config = signing.Config().use_elliptic_key_signer(private_key=private_key, password=password)  # type: ignore[arg-type]  # the library annotates str; cryptography needs bytes
        try:
            config.set_hashing_config(_hashing_config()).sign(adapter_dir, tmp)
        except ValueError as exc:  # a symlink, or a file that vanished while hashing
            raise ModelError(f"adapter_dir {adapter_dir}: cannot hash it for signing ({exc})") from exc
        os.chmod(tmp, 0o644)  # mkstemp made it 0600; serve may run as another user and reads it
        os.replace(tmp, adapter_dir / SIGNATURE_NAME)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return adapter_dir / SIGNATURE_NAME


def verify_adapter(adapter_dir: Path, public_key: Path) -> VerifyResult:
    """Check `adapter_dir/model.sig` against `public_key` and every file in `adapter_dir`.

    Raises SignatureError naming each changed, added or missing file, a different signing key, a
    forged or corrupt signature, or an unsigned directory."""
    _require_dir(adapter_dir)
    signature = adapter_dir / SIGNATURE_NAME
    if not signature.is_file():
        raise SignatureError(
            f"adapter_dir {adapter_dir} is not signed: no {SIGNATURE_NAME}; sign it with "
            f"`loraforge sign {adapter_dir} --key PRIVATE.pem` (sign_adapter)",
            reason="unsigned",
        )
    key_id = hashlib.sha256(_public_pem(_load_public_key(public_key))).hexdigest()
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=public_key).set_hashing_config(
            _hashing_config()
        ).verify(adapter_dir, signature)
    except InvalidSignature as exc:
        raise SignatureError(
            f"{signature}: forged or altered signature: its envelope does not verify under public_key "
            f"{public_key} (--pub) although the key id matches; re-sign the adapter with its private key",
            reason="forged",
        ) from exc
    except ValueError as exc:
        raise _classify(exc, adapter_dir, signature, public_key, key_id) from exc
    except (json.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
        raise _corrupt(signature, exc) from exc
    return VerifyResult(adapter_dir, signature, tuple(sorted(_signed_digests(signature))), key_id)


def _classify(exc: ValueError, adapter_dir: Path, signature: Path, public_key: Path, key_id: str) -> SignatureError:
    text = str(exc)
    if text.startswith("Signature mismatch"):
        return _files_differ(adapter_dir, signature)
    if text.startswith("Key mismatch"):
        signed_by = _bundle(signature).get("verificationMaterial", {}).get("publicKey", {}).get("hint", "?")
        return SignatureError(
            f"{signature}: signed by a different key: the signature names key {signed_by}, public_key "
            f"{public_key} (--pub) is key {key_id}; verify with the public key paired with the signing key",
            reason="wrong_key",
        )
    return _corrupt(signature, exc)


def _corrupt(signature: Path, exc: Exception) -> SignatureError:
    return SignatureError(
        f"{signature}: not a readable model-signing signature ({type(exc).__name__}: {exc}); "
        "re-sign the adapter with `loraforge sign` (sign_adapter)",
        reason="corrupt",
    )


def _files_differ(adapter_dir: Path, signature: Path) -> SignatureError:
    """The library says only that the manifests differ; hash the directory as it did and diff per file."""
    signed = _signed_digests(signature)
    ignored = _bundle_statement(signature)["predicate"]["serialization"].get("ignore_paths", [])
    config = _hashing_config(extra_ignored=ignored)
    actual = {rd.identifier: rd.digest.digest_hex for rd in config.hash(adapter_dir).resource_descriptors()}
    changed = tuple(sorted(name for name in signed.keys() & actual.keys() if signed[name] != actual[name]))
    added = tuple(sorted(actual.keys() - signed.keys()))
    missing = tuple(sorted(signed.keys() - actual.keys()))
    parts = [
        f"{label}: {', '.join(names)}"
        for label, names in (("changed", changed), ("added", added), ("missing", missing))
        if names
    ]
    return SignatureError(
        f"adapter_dir {adapter_dir} differs from what {signature.name} signed ({'; '.join(parts)}); "
        "do not ship it, or re-sign a deliberate change with `loraforge sign` (sign_adapter)",
        reason="files_differ",
        changed=changed,
        added=added,
        missing=missing,
    )


def _hashing_config(extra_ignored: list[str] | None = None) -> hashing.Config:
    # The same ignore set as `model_signing sign key`/`verify key` (the signature plus git metadata:
    # .git, .gitattributes, .github, .gitignore), so the library's CLI and we agree on every file.
    paths = [SIGNATURE_NAME, *(extra_ignored or [])]
    return hashing.Config().set_ignored_paths(paths=paths, ignore_git_paths=True)


def _bundle(signature: Path) -> dict[str, Any]:
    try:
        data = json.loads(signature.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _corrupt(signature, exc) from exc
    if not isinstance(data, dict):
        raise _corrupt(signature, TypeError("the bundle is not a JSON object"))
    return data


def _bundle_statement(signature: Path) -> dict[str, Any]:
    try:
        payload = base64.b64decode(_bundle(signature)["dsseEnvelope"]["payload"], validate=True)
        statement = json.loads(payload)
    except (KeyError, TypeError, binascii.Error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _corrupt(signature, exc) from exc
    if not isinstance(statement, dict):
        raise _corrupt(signature, TypeError("the in-toto statement is not a JSON object"))
    return statement


def _signed_digests(signature: Path) -> dict[str, str]:
    try:
        resources = _bundle_statement(signature)["predicate"]["resources"]
        return {str(r["name"]): str(r["digest"]) for r in resources}
    except (KeyError, TypeError) as exc:
        raise _corrupt(signature, exc) from exc


def _require_dir(adapter_dir: Path) -> None:
    if not adapter_dir.is_dir():
        raise ModelError(f"adapter_dir {adapter_dir} (ADAPTER_DIR) is not a directory; pass an adapter directory")


def _load_private_key(path: Path, password: bytes | None, flag: str = "--key") -> ec.EllipticCurvePrivateKey:
    if not path.is_file():
        raise SigningKeyError(f"private_key {path} ({flag}) does not exist; make one with `loraforge keygen DIR`")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password)
    except TypeError as exc:  # cryptography: a password for a plain key, or none for an encrypted one
        hint = (
            "pass none (drop --password-env)"
            if password
            else "pass its password (password=, --password-env VAR, ship.password_env)"
        )
        raise SigningKeyError(f"private_key {path} ({flag}): {exc}; {hint}") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(
            f"private_key {path} ({flag}) cannot be loaded ({exc}): a wrong password "
            "(password=, --password-env, ship.password_env), or not a PEM private key"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in SUPPORTED_CURVES:
        raise SigningKeyError(f"private_key {path} ({flag}) is {_kind(key)}; {_supported()}")
    return key


def _load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    if not path.is_file():
        raise SigningKeyError(f"public_key {path} (--pub) does not exist; pass the public.pem beside the signing key")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"public_key {path} (--pub) is not a PEM public key ({exc}); pass public.pem") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in SUPPORTED_CURVES:
        raise SigningKeyError(f"public_key {path} (--pub) is {_kind(key)}; {_supported()}")
    return key


def _kind(key: object) -> str:
    curve = getattr(key, "curve", None)
    return f"an EC key on {curve.name}" if curve is not None else f"a {type(key).__name__.lstrip('_')}"


def _supported() -> str:
    return f"model-signing accepts EC keys on {', '.join(SUPPORTED_CURVES)} only: make one with `loraforge keygen DIR`"


def _public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
