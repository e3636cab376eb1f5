"""`loraforge keygen DIR`, `sign ADAPTER_DIR --key KEY.pem`, `verify ADAPTER_DIR --pub PUB.pem`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from loraforge.errors import SignatureError

console = Console()

PASSWORD_ENV_HELP = "Read the private key's password from this environment variable (never from argv)."


def keygen(
    key_dir: Path = typer.Argument(..., help="Folder for private.pem (mode 0600) and public.pem."),
    password_env: str | None = typer.Option(None, "--password-env", metavar="VAR", help=PASSWORD_ENV_HELP),
    force: bool = typer.Option(False, "--force", help="Replace an existing key pair (orphans its signatures)."),
) -> None:
    """Write an EC P-256 key pair for signing adapters."""
    from loraforge.ship.signing import generate_keypair  # deferred: model-signing imports cost seconds

    private, public = generate_keypair(key_dir, _password(password_env), overwrite=force)
    console.print(f"private key {escape(str(private))} (keep it secret)\npublic key  {escape(str(public))}")


def sign(
    adapter_dir: Path = typer.Argument(..., help="Adapter folder; every file in it but model.sig is signed."),
    key: Path = typer.Option(..., "--key", metavar="KEY.pem", help="Private key (from `loraforge keygen`)."),
    password_env: str | None = typer.Option(None, "--password-env", metavar="VAR", help=PASSWORD_ENV_HELP),
) -> None:
    """Write ADAPTER_DIR/model.sig (OpenSSF model signing) covering every other file."""
    from loraforge.ship.signing import sign_adapter

    signature = sign_adapter(adapter_dir, key, _password(password_env))
    console.print(f"signed: {escape(str(signature))}")


def verify(
    adapter_dir: Path = typer.Argument(..., help="Signed adapter folder (holds model.sig)."),
    pub: Path = typer.Option(..., "--pub", metavar="PUB.pem", help="Public key paired with the signing key."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (also on failure)."),
) -> None:
    """Check model.sig against the key and every file; exit 4 naming each changed, added or missing file."""
    from loraforge.ship.signing import verify_adapter

    try:
        result = verify_adapter(adapter_dir, pub)
    except SignatureError as exc:
        if as_json:
            failure = {"adapter_dir": str(adapter_dir), "verified": False, "reason": exc.reason, "message": str(exc)}
            failure.update(changed=list(exc.changed), added=list(exc.added), missing=list(exc.missing))
            typer.echo(json.dumps(failure, indent=2))
        raise
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    console.print(
        f"[green]verified[/]: {escape(str(adapter_dir))}, {len(result.files)} files, key {result.key_id[:16]}\n"
        + "\n".join(f"  {escape(name)}" for name in result.files)
    )


def _password(env_var: str | None) -> bytes | None:
    from loraforge.ship.signing import password_from_env

    return None if env_var is None else password_from_env(env_var)


def register(app: typer.Typer) -> None:
    app.command("keygen")(keygen)
    app.command("sign")(sign)
    app.command("verify")(verify)
