"""The package version (its own module, so any layer may read it)."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.5.0"
