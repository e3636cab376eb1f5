"""Signing adapters: keygen, sign, verify naming what differs, and the model_signing CLI agreeing."""

from __future__ import annotations

import base64
import json
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from loraforge.errors import ModelError, SignatureError, SigningKeyError
from loraforge.ship.signing import (
    SIGNATURE_NAME,
    generate_keypair,
    sign_adapter,
    verify_adapter,
)

MODEL_SIGNING_CLI = Path(sys.executable).parent / "model_signing"
ADAPTER_FILES = ["adapter_model.safetensors", "adapter_config.json", "loraforge.json", "README.md"]


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys")


def _library_cli_verify(adapter_dir: Path, public_key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MODEL_SIGNING_CLI), "verify", "key", str(adapter_dir), "--signature", str(adapter_dir / SIGNATURE_NAME),
         "--public_key", str(public_key)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_keygen_writes_p256_pair_with_private_key_0600(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "keys")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    key = serialization.load_pem_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    pub = serialization.load_pem_public_key(public.read_bytes())
    assert pub.public_numbers() == key.public_key().public_numbers()
    assert sorted(p.name for p in private.parent.iterdir()) == ["private.pem", "public.pem"]  # no temp files left


def test_keygen_refuses_to_overwrite_existing_keys(keys: tuple[Path, Path]) -> None:
    private, _ = keys
    before = private.read_bytes()
    with pytest.raises(SigningKeyError, match="already exists.*overwrite=True"):
        generate_keypair(private.parent)
    assert private.read_bytes() == before
    generate_keypair(private.parent, overwrite=True)
    assert private.read_bytes() != before


def test_keygen_with_password_encrypts_the_private_key(tmp_path: Path) -> None:
    private, _ = generate_keypair(tmp_path / "keys", password=b"s3cret")
    assert b"ENCRYPTED PRIVATE KEY" in private.read_bytes()
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(private.read_bytes(), None)


def test_sign_then_verify_covers_every_file_but_the_signature(adapter: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    signature = sign_adapter(adapter, private)
    assert signature == adapter / SIGNATURE_NAME
    assert stat.S_IMODE(signature.stat().st_mode) == 0o644  # readable like the files it covers
    result = verify_adapter(adapter, public)
    assert sorted(result.files) == sorted(ADAPTER_FILES)
    assert not [p.name for p in adapter.parent.iterdir() if p.name.endswith(".tmp")]  # the temp was renamed in


def test_library_cli_accepts_our_signature(adapter: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    sign_adapter(adapter, private)
    done = _library_cli_verify(adapter, public)
    assert done.returncode == 0, done.stderr
    assert "Verification succeeded" in done.stdout


def test_resigning_replaces_the_signature(adapter: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    sign_adapter(adapter, private)
    (adapter / "README.md").write_text("# adapter\n\nA deliberate change to the card.\n")
    sign_adapter(adapter, private)
    assert "README.md" in verify_adapter(adapter, public).files


def test_sign_with_password_protected_key(adapter: Path, tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "keys", password=b"s3cret")
    sign_adapter(adapter, private, password=b"s3cret")
    assert verify_adapter(adapter, public).files


@pytest.mark.parametrize(("password", "message"), [(None, "pass its password"), (b"wrong", "wrong password")])
def test_sign_names_a_missing_or_wrong_password(
    adapter: Path, tmp_path: Path, password: bytes | None, message: str
) -> None:
    private, _ = generate_keypair(tmp_path / "keys", password=b"s3cret")
    with pytest.raises(SigningKeyError, match=message):
        sign_adapter(adapter, private, password=password)
    assert not (adapter / SIGNATURE_NAME).exists()


def test_sign_refuses_a_key_model_signing_cannot_use(adapter: Path, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256K1())
    path = tmp_path / "k1.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    with pytest.raises(SigningKeyError, match="secp256k1.*secp256r1"):
        sign_adapter(adapter, path)


def test_sign_names_a_missing_key_and_a_missing_adapter_dir(adapter: Path, tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="private_key .*nope.pem.*loraforge keygen"):
        sign_adapter(adapter, tmp_path / "nope.pem")
    private, _ = generate_keypair(tmp_path / "keys")
    with pytest.raises(ModelError, match="adapter_dir .*not-there.* not a directory"):
        sign_adapter(tmp_path / "not-there", private)


@pytest.mark.parametrize("name", ADAPTER_FILES)
def test_flipped_byte_fails_verify_naming_the_file(adapter: Path, keys: tuple[Path, Path], name: str) -> None:
    private, public = keys
    sign_adapter(adapter, private)
    _flip_byte(adapter / name)
    with pytest.raises(SignatureError, match=f"changed: {name}") as caught:
        verify_adapter(adapter, public)
    assert (caught.value.reason, caught.value.changed, caught.value.added, caught.value.missing) == (
        "files_differ", (name,), (), ()
    )  # fmt: skip
    assert caught.value.exit_code == 4
    done = _library_cli_verify(adapter, public)
    assert done.returncode != 0
    assert name in done.stderr


def test_added_file_fails_verify_naming_it(adapter: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    sign_adapter(adapter, private)
    (adapter / "extra_weights.safetensors").write_bytes(b"not signed")
    with pytest.raises(SignatureError, match="added: extra_weights.safetensors") as caught:
        verify_adapter(adapter, public)
    assert caught.value.added == ("extra_weights.safetensors",)
    done = _library_cli_verify(adapter, public)
    assert done.returncode != 0
    assert "extra_weights.safetensors" in done.stderr


def test_removed_file_fails_verify_naming_it(adapter: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    sign_adapter(adapter, private)
    (adapter / "README.md").unlink()
    with pytest.raises(SignatureError, match="missing: README.md") as caught:
        verify_adapter(adapter, public)
    assert caught.value.missing == ("README.md",)
    done = _library_cli_verify(adapter, public)
    assert done.returncode != 0
    assert "README.md" in done.stderr


def test_added_file_in_a_subdirectory_is_named_by_its_path(adapter: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    sign_adapter(adapter, private)
    (adapter / "extra").mkdir()
    (adapter / "extra" / "note.txt").write_text("unsigned")
    with pytest.raises(SignatureError, match="added: extra/note.txt"):
        verify_adapter(adapter, public)


def test_wrong_key_is_named(adapter: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, _ = keys
    _, other_public = generate_keypair(tmp_path / "other")
    sign_adapter(adapter, private)
    with pytest.raises(SignatureError, match="signed by a different key") as caught:
        verify_adapter(adapter, other_public)
    assert caught.value.reason == "wrong_key"
    assert _library_cli_verify(adapter, other_public).returncode != 0


def test_forged_signature_is_refused(adapter: Path, keys: tuple[Path, Path]) -> None:
    """Rewrite the signed statement so it lists a tampered file's digest: the envelope no longer verifies."""
    private, public = keys
    sign_adapter(adapter, private)
    _flip_byte(adapter / "adapter_model.safetensors")
    from loraforge.files import sha256_file

    bundle = json.loads((adapter / SIGNATURE_NAME).read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    for resource in statement["predicate"]["resources"]:
        if resource["name"] == "adapter_model.safetensors":
            resource["digest"] = sha256_file(adapter / "adapter_model.safetensors")
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (adapter / SIGNATURE_NAME).write_text(json.dumps(bundle))
    with pytest.raises(SignatureError, match="forged or altered signature") as caught:
        verify_adapter(adapter, public)
    assert caught.value.reason == "forged"
    assert _library_cli_verify(adapter, public).returncode != 0


def test_corrupt_signature_is_named(adapter: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    sign_adapter(adapter, private)
    (adapter / SIGNATURE_NAME).write_text("not a bundle")
    with pytest.raises(SignatureError, match="not a readable model-signing signature") as caught:
        verify_adapter(adapter, public)
    assert caught.value.reason == "corrupt"


def test_unsigned_adapter_is_named(adapter: Path, keys: tuple[Path, Path]) -> None:
    _, public = keys
    with pytest.raises(SignatureError, match="is not signed: no model.sig.*loraforge sign") as caught:
        verify_adapter(adapter, public)
    assert caught.value.reason == "unsigned"


def test_verify_names_a_public_key_that_is_not_one(adapter: Path, keys: tuple[Path, Path]) -> None:
    private, _ = keys
    sign_adapter(adapter, private)
    with pytest.raises(SigningKeyError, match="public_key .*private.pem.*not a PEM public key"):
        verify_adapter(adapter, private)


def test_keygen_sign_verify_need_no_network(adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network use in a test that blocks sockets")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(OSError, match="blocks sockets"):
        socket.create_connection(("example.com", 443))  # the block is in place
    private, public = generate_keypair(tmp_path / "keys")
    sign_adapter(adapter, private)
    assert verify_adapter(adapter, public).files
