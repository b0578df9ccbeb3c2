"""The wheel ships the browser files, and the app finds them from a wheel or a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from fantasize_rtc._resources import static_dir

ROOT = Path(__file__).resolve().parents[1]


def test_static_found_from_checkout() -> None:
    assert (static_dir() / "index.html").is_file()


def test_wheel_contains_static_and_finds_it(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("fantasize_rtc_server-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    assert "fantasize_rtc/static/index.html" in names
    assert "fantasize_rtc/py.typed" in names
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)
    # Import the unpacked wheel in a clean interpreter: static_dir() must point inside it.
    code = "from fantasize_rtc._resources import static_dir; print(static_dir())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert out.stdout.strip() == str(tmp_path / "site" / "fantasize_rtc" / "static")
