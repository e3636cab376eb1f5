"""Tenants: keys made by `loraforge tenants add`, stored as sha256 only, checked on every request."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraforge.cli import main
from loraforge.errors import ConfigError
from loraforge.serve.tenants import KEY_PREFIX, Tenants, add_tenant, hash_key

HASH = "ab" * 32
ACME = f"tenants:\n  acme:\n    api_key_sha256: {HASH}\n"  # a good tenant, to add one bad field to


def cli_add(capsys: pytest.CaptureFixture[str], file: Path, *argv: str) -> str:
    """Run `loraforge tenants add ...`; the key it printed on stdout."""
    assert main(["tenants", "add", *argv, "--file", str(file)]) == 0
    return capsys.readouterr().out.strip()


def test_key_printed_by_add_authenticates_the_tenant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "tenants.yaml"
    key = cli_add(capsys, file, "acme", "--adapters", "support-bot,faq")

    tenant = Tenants.load(file).authenticate(key)

    assert key.startswith(KEY_PREFIX) and len(key) > 40
    assert tenant is not None
    assert (tenant.name, tenant.adapters, tenant.base, tenant.max_concurrent) == (
        "acme",
        frozenset({"support-bot", "faq"}),
        True,
        None,
    )


def test_add_says_the_key_is_shown_once_and_not_stored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tenants", "add", "acme", "--adapters", "faq", "--file", str(tmp_path / "t.yaml")]) == 0
    assert "not stored" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("wrong", ["", None, "lf-not-the-key", "LF-"])
def test_wrong_or_missing_key_authenticates_no_one(tmp_path: Path, wrong: str | None) -> None:
    file = tmp_path / "tenants.yaml"
    add_tenant(file, "acme", ["faq"])
    assert Tenants.load(file).authenticate(wrong) is None


def test_file_holds_the_hash_and_never_the_key(tmp_path: Path) -> None:
    file = tmp_path / "tenants.yaml"
    key = add_tenant(file, "acme", ["faq"])
    text = file.read_text()
    assert key not in text and key.removeprefix(KEY_PREFIX) not in text
    assert hash_key(key) in text


def test_rotate_invalidates_the_old_key_and_keeps_the_limit(tmp_path: Path) -> None:
    file = tmp_path / "tenants.yaml"
    old = add_tenant(file, "acme", ["faq"])
    file.write_text(file.read_text().replace("base: true", "base: true\n    max_concurrent: 3"))

    new = add_tenant(file, "acme", ["faq", "support-bot"], rotate=True)

    tenants = Tenants.load(file)
    assert tenants.authenticate(old) is None
    rotated = tenants.authenticate(new)
    assert rotated is not None and rotated.adapters == {"faq", "support-bot"} and rotated.max_concurrent == 3


def test_adding_an_existing_tenant_without_rotate_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "tenants.yaml"
    key = add_tenant(file, "acme", ["faq"])
    with pytest.raises(ConfigError, match=r"tenant 'acme' already exists.*--rotate"):
        add_tenant(file, "acme", ["faq"])
    assert Tenants.load(file).authenticate(key) is not None  # the old key still works


def test_rotating_an_unknown_tenant_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "tenants.yaml"
    add_tenant(file, "acme", ["faq"])
    with pytest.raises(ConfigError, match="'acme2' is not in the file"):
        add_tenant(file, "acme2", ["faq"], rotate=True)


def test_no_base_tenant_may_not_use_the_base(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "tenants.yaml"
    key = cli_add(capsys, file, "acme", "--adapters", "faq", "--no-base")
    tenant = Tenants.load(file).authenticate(key)
    assert tenant is not None and tenant.base is False


def test_tenants_each_get_their_own_key(tmp_path: Path) -> None:
    file = tmp_path / "tenants.yaml"
    acme, globex = add_tenant(file, "acme", ["faq"]), add_tenant(file, "globex", [])
    tenants = Tenants.load(file)
    assert [t.name for t in tenants] == ["acme", "globex"]
    assert (tenants.authenticate(acme), tenants.authenticate(globex)) == (tenants.get("acme"), tenants.get("globex"))


def test_may_use_covers_every_version_of_its_adapters_only(tmp_path: Path) -> None:
    file = tmp_path / "tenants.yaml"
    key = add_tenant(file, "acme", ["faq"])
    tenant = Tenants.load(file).authenticate(key)
    assert tenant is not None
    assert (tenant.may_use("faq"), tenant.may_use("faq@3"), tenant.may_use("support-bot")) == (True, True, False)


def test_list_shows_names_and_adapters_but_no_hashes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "tenants.yaml"
    key = add_tenant(file, "acme", ["support-bot"])
    assert main(["tenants", "list", "--file", str(file)]) == 0
    out = capsys.readouterr().out
    assert "acme" in out and "support-bot" in out
    assert hash_key(key)[:12] not in out and key not in out


def test_bad_adapter_name_is_refused_on_add(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"adapter '\.\./etc' is not a registry name"):
        add_tenant(tmp_path / "tenants.yaml", "acme", ["../etc"])
    assert not (tmp_path / "tenants.yaml").exists()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tenants: [acme", "not valid YAML"),
        (
            ACME + "    adapter: [faq]\n",
            "tenant 'acme': unknown field 'adapter'",
        ),
        ("tenants:\n  acme:\n    api_key_sha256: lf-clear-key\n", "tenant 'acme': api_key_sha256 must be 64"),
        (f"tenants:\n  acme:\n    api_key_sha256: {HASH.upper()}\n", "tenant 'acme': api_key_sha256 must be 64"),
        (
            f"tenants:\n  acme:\n    api_key_sha256: {HASH}\n  acme:\n    api_key_sha256: {'cd' * 32}\n",
            "duplicate key 'acme' \\(line 4\\)",
        ),
        (
            f"tenants:\n  acme:\n    api_key_sha256: {HASH}\n  globex:\n    api_key_sha256: {HASH}\n",
            "tenants 'acme' and 'globex' have the same api_key_sha256",
        ),
        (
            ACME + "    base: 'no'\n",
            "tenant 'acme': base must be true or false",
        ),
        (ACME + "    max_concurrent: 0\n", "tenant 'acme': max_concurrent"),
        (
            ACME + "    adapters: faq\n",
            "tenant 'acme': adapters must be a list",
        ),
        ("acme: {}\n", "the file must be one mapping `tenants:"),
        (f"tenants:\n  123:\n    api_key_sha256: {HASH}\n", "tenant 123: a tenant name is a string"),
    ],
    ids=[
        "bad-yaml",
        "unknown-field",
        "clear-key",
        "upper-hex",
        "duplicate-tenant",
        "shared-hash",
        "base-not-bool",
        "zero-limit",
        "adapters-not-list",
        "no-tenants-key",
        "number-name",
    ],
)
def test_bad_tenants_file_is_a_config_error_naming_file_and_tenant(tmp_path: Path, text: str, problem: str) -> None:
    file = tmp_path / "tenants.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=problem) as info:
        Tenants.load(file)
    assert str(file) in str(info.value)


def test_missing_tenants_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loraforge tenants add NAME"):
        Tenants.load(tmp_path / "absent.yaml")


def test_add_refuses_to_rewrite_a_broken_file(tmp_path: Path) -> None:
    file = tmp_path / "tenants.yaml"
    file.write_text(ACME + "    colour: red\n")
    with pytest.raises(ConfigError, match="unknown field 'colour'"):
        add_tenant(file, "globex", [])
    assert "colour: red" in file.read_text()
