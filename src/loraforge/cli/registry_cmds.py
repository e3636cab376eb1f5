"""`loraforge registry ...`: publish, list, show, promote, roll back, remove and verify adapters.

Each command makes one `loraforge.ship.registry.Registry` call and prints its result, as a table or
with --json as JSON with stable keys (the objects' `as_dict`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loraforge.ship.registry_files import parse_ref, parse_versioned_ref

if TYPE_CHECKING:
    from loraforge.ship.registry import Entry, LiveState, Registry

console = Console()
registry_app = typer.Typer(
    help="The adapter registry serve reads from: publish gated adapters, promote one live, roll back.",
    no_args_is_help=True,
)
REGISTRY_OPTION = typer.Option(None, "--registry", help="Registry directory (default $LORAFORGE_HOME/registry).")
JSON_OPTION = typer.Option(False, "--json", help="Print JSON with stable keys instead of a table.")


def _open(root: Path | None) -> Registry:
    from loraforge.ship.registry import Registry  # deferred: reading manifests imports torch (seconds)

    return Registry(root) if root is not None else Registry.default()


def _echo_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, sort_keys=True))


def _fields(title: str, rows: dict[str, str]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in rows.items():
        table.add_row(key, escape(value))
    return table


def _entry_table(entry: Entry) -> Table:
    forced = f"yes: {entry.forced_reason}" if entry.forced else "no"
    return _fields(
        f"{entry.name}@{entry.version}" + (" (live)" if entry.live else ""),
        {
            "published": entry.published_at,
            "verdict": entry.verdict or "none",
            "forced": forced,
            "signed": "yes" if entry.signed else "no",
            "base fingerprint": entry.base_fingerprint or "unknown",
            "source": entry.source,
            "path": str(entry.path),
            "files": ", ".join(f"{path} {sha[:12]}" for path, sha in entry.files.items()),
        },
    )


def _live_line(state: LiveState, verb: str) -> None:
    was = "none" if state.previous is None else f"{state.name}@{state.previous}"
    console.print(f"{verb}: {state.name}@{state.version} is live (was {was})", highlight=False)


@registry_app.command("init")
def init(
    require_signatures: bool = typer.Option(
        False, "--require-signatures", help="Refuse to publish adapters without a model.sig that verifies."
    ),
    pub: Path | None = typer.Option(None, "--pub", help="PEM public key that verifies signatures (copied in)."),
    force: bool = typer.Option(
        False, "--force", help="Allow loosening: stop requiring signatures, drop or replace the key."
    ),
    registry: Path | None = REGISTRY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Create the registry, or change its settings (signatures required, the key that checks them)."""
    settings = _open(registry).init(require_signatures, pub, force)
    if as_json:
        _echo_json(settings.as_dict())
        return
    key = "none" if settings.public_key is None else str(settings.public_key)
    rows = {"require signatures": "yes" if settings.require_signatures else "no", "public key": key}
    console.print(_fields(f"registry: {settings.root}", rows))


@registry_app.command("publish")
def publish(
    adapter_dir: Path = typer.Argument(..., help="Adapter directory (OUTPUT/adapter) with its gated manifest."),
    name: str = typer.Option(..., "--name", help="Adapter name: a-z, 0-9, '.', '_', '-' (1-64, no paths)."),
    force: bool = typer.Option(
        False, "--force", help="Publish a gate-blocked or ungated adapter anyway (recorded in the entry)."
    ),
    registry: Path | None = REGISTRY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Copy ADAPTER_DIR in as NAME's next version; refuses gate-blocked, ungated or (when required) unsigned ones."""
    entry = _open(registry).publish(adapter_dir, name, force)
    if as_json:
        _echo_json(entry.as_dict())
        return
    console.print(_entry_table(entry))
    console.print(
        f"published {entry.name}@{entry.version}; make it live: loraforge registry promote "
        f"{entry.name}@{entry.version}",
        highlight=False,
    )


@registry_app.command("list")
def list_command(registry: Path | None = REGISTRY_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Every version of every adapter: verdict, forced, signed, which one is live."""
    reg = _open(registry)
    entries = reg.list()
    if as_json:
        _echo_json({"registry": str(reg.root), "entries": [e.as_dict() for e in entries]})
        return
    table = Table(title=f"registry: {reg.root}")
    for column in ["name", "version", "live", "verdict", "forced", "signed", "published", "base fingerprint"]:
        table.add_column(column)
    for e in entries:
        fingerprint = (e.base_fingerprint or "unknown")[:23]
        table.add_row(
            e.name, str(e.version), "live" if e.live else "", e.verdict or "none",
            "forced" if e.forced else "", "yes" if e.signed else "no", e.published_at, fingerprint,
        )  # fmt: skip
    console.print(table if entries else f"registry {reg.root} holds no adapters", highlight=False)


@registry_app.command("show")
def show(
    ref: str = typer.Argument(..., metavar="NAME[@VERSION]", help="Adapter name; without @VERSION, the live one."),
    registry: Path | None = REGISTRY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """One version's entry: verdict, forced reason, signature, source, files and their sha256."""
    reg = _open(registry)
    entry = reg.show(*parse_ref(ref, reg.root))
    if as_json:
        _echo_json(entry.as_dict())
        return
    console.print(_entry_table(entry))


@registry_app.command("promote")
def promote(
    ref: str = typer.Argument(..., metavar="NAME@VERSION", help="The version to make live."),
    registry: Path | None = REGISTRY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Make NAME@VERSION the one serve reads; the version it replaces stays, for rollback."""
    reg = _open(registry)
    state = reg.promote(*parse_versioned_ref(ref, reg.root))
    if as_json:
        _echo_json(state.as_dict())
        return
    _live_line(state, "promoted")


@registry_app.command("rollback")
def rollback(
    name: str = typer.Argument(..., help="Adapter name."),
    registry: Path | None = REGISTRY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Make the version that was live before the current one live again."""
    state = _open(registry).rollback(name)
    if as_json:
        _echo_json(state.as_dict())
        return
    _live_line(state, "rolled back")


@registry_app.command("remove")
def remove(
    ref: str = typer.Argument(..., metavar="NAME@VERSION", help="The version to delete (never the live one)."),
    registry: Path | None = REGISTRY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Delete one version that is not live; its number is never given out again."""
    reg = _open(registry)
    entry = reg.remove(*parse_versioned_ref(ref, reg.root))
    if as_json:
        _echo_json({"name": entry.name, "version": entry.version, "removed": True})
        return
    console.print(f"removed {entry.name}@{entry.version}", highlight=False)


@registry_app.command("verify")
def verify(registry: Path | None = REGISTRY_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Check every version's files against their sha256s, its manifest and its signature; exit 1 on a problem."""
    reg = _open(registry)
    checks = reg.verify()
    ok = all(check.ok for check in checks)
    if as_json:
        _echo_json({"registry": str(reg.root), "ok": ok, "results": [c.as_dict() for c in checks]})
    else:
        table = Table(title=f"verify: {reg.root}")
        for column in ["name", "version", "result", "signature", "problems"]:
            table.add_column(column)
        for c in checks:
            result = "[green]ok[/]" if c.ok else "[red]FAILED[/]"
            table.add_row(c.name, str(c.version), result, c.signature, escape("; ".join(c.problems)))
        console.print(table if checks else f"registry {reg.root} holds no adapters", highlight=False)
    if not ok:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry")
