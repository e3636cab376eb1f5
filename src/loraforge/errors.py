"""The errors loraforge raises for problems a user can fix.

The library raises these; only the CLI prints them and picks the exit code (2 for a user
error, 3 for a blocked gate, 4 for an adapter that fails signature verification). Messages say
what, where and how to fix, on one line when they can.
"""

from __future__ import annotations


class LoraforgeError(Exception):
    """A problem the user can fix: bad config, bad data, a missing file or package."""

    exit_code = 2


class ConfigError(LoraforgeError):
    """The config is invalid. Holds every problem found, so the user fixes them in one pass."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"{source}: {len(self.problems)} {noun}:\n{lines}")


class DataError(LoraforgeError):
    """A data file or row is invalid; the message names file, line and the fix."""


class ModelError(LoraforgeError):
    """A base model or adapter cannot be resolved, loaded, or does not match."""


class TrainError(LoraforgeError):
    """Training cannot start or had to stop (NaN loss, no-op adapter, refused resume)."""


class ResumeRefused(TrainError):
    """A checkpoint's run differs from the one asked for (config, base or data changed)."""


class EvalError(LoraforgeError):
    """The golden set or an eval input is unusable (changed hash, unknown check)."""


class RegistryError(LoraforgeError):
    """A registry operation is refused (bad name, unknown version, blocked adapter, no live version)."""


class GateBlocked(LoraforgeError):
    """The eval gate blocked the adapter; the message lists the reasons."""

    exit_code = 3


class SigningKeyError(LoraforgeError):
    """A signing key is missing, unreadable, locked by another password, of an unsupported kind,
    or would be overwritten."""


class SignatureError(ModelError):
    """An adapter does not verify: not signed, signed by another key, a forged or corrupt
    signature, or files that differ from what was signed (named in the message). A ModelError
    (an adapter that does not match), so code that refuses bad adapters catches it too.

    Exit 4, apart from 2 (a usage or input mistake) and 3 (a blocked gate): a script that ships
    adapters can tell "this artifact must not ship" from "the command was called wrongly".
    """

    exit_code = 4

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        changed: tuple[str, ...] = (),
        added: tuple[str, ...] = (),
        missing: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.reason = reason  # unsigned | wrong_key | forged | corrupt | files_differ
        self.changed = changed
        self.added = added
        self.missing = missing
