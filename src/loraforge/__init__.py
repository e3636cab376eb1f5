"""loraforge: from a jsonl corpus to a tested, signed LoRA adapter on a shared base model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("loraforge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
