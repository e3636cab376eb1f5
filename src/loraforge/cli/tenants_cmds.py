"""`loraforge tenants ...`: add (or re-key) a tenant of the server, list the tenants.

Each command makes one `loraforge.serve.tenants` call. The clear API key goes to stdout alone
(`KEY=$(loraforge tenants add ...)` captures it), the notice that it is not stored to stderr.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)
tenants_app = typer.Typer(
    help="Who may call `loraforge serve`: API keys (stored as sha256 only) and the adapters each tenant may use.",
    no_args_is_help=True,
)
FILE_OPTION = typer.Option(Path("tenants.yaml"), "--file", help="The tenants file serve reads (--tenants).")


@tenants_app.command("add")
def add(
    name: str = typer.Argument(..., help="Tenant name: letters, digits, '.', '_', '-' (1-64)."),
    adapters: str = typer.Option(
        ..., "--adapters", help='Comma-separated registry names the tenant may call ("" for none).'
    ),
    no_base: bool = typer.Option(False, "--no-base", help="Do not let the tenant call the bare base."),
    file: Path = FILE_OPTION,
    rotate: bool = typer.Option(
        False, "--rotate", help="Give an existing tenant a new key (the old one stops working) and these adapters."
    ),
) -> None:
    """Add tenant NAME to the tenants file and print its new API key, once."""
    from loraforge.serve.tenants import add_tenant

    names = [part.strip() for part in adapters.split(",") if part.strip()]
    key = add_tenant(file, name, names, base=not no_base, rotate=rotate)
    verb = "re-keyed" if rotate else "added"
    err_console.print(
        f"{verb} tenant {name} in {file}; its API key is below. It is shown once and not stored "
        "(the file keeps only its sha256): copy it now.",
        highlight=False,
        soft_wrap=True,
    )
    typer.echo(key)


@tenants_app.command("list")
def list_command(file: Path = FILE_OPTION) -> None:
    """The tenants: names, the adapters each may call, base access, concurrency limit (never keys or hashes)."""
    from loraforge.serve.tenants import Tenants

    table = Table(title=f"tenants: {file}")
    for column in ("tenant", "adapters", "base", "max concurrent"):
        table.add_column(column)
    for tenant in Tenants.load(file):
        limit = "default" if tenant.max_concurrent is None else str(tenant.max_concurrent)
        adapters = ", ".join(sorted(tenant.adapters)) or "none"
        table.add_row(escape(tenant.name), escape(adapters), "yes" if tenant.base else "no", limit)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(tenants_app, name="tenants")
