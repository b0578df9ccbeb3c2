"""Where the bundled browser files are: inside the wheel, or ``static/`` of a source checkout."""

from __future__ import annotations

from pathlib import Path

__all__ = ["static_dir"]


def static_dir() -> Path:
    packaged = Path(__file__).with_name("static")
    if (packaged / "index.html").is_file():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "static"
    if (checkout / "index.html").is_file():
        return checkout
    raise FileNotFoundError("The static files are missing: reinstall fantasize-rtc-server.")
