"""DESIGN.md's layers: the core imports only the standard library; nothing below the transports
imports a web framework or the media stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "server" / "fantasize_rtc"
CORE = ["errors.py", "config.py", "protocol.py", "rooms.py", "events.py", "ratelimit.py"]
HEAVY = ("aiohttp", "aiortc", "av", "redis", "jwt", "starlette", "fastapi", "litestar")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every import in a file; level > 0 is relative."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.extend((0, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


def test_core_imports_only_stdlib_and_core() -> None:
    core_modules = {name[:-3] for name in CORE}
    for name in CORE:
        for level, module in _imports(PACKAGE / name):
            if level:
                assert module.split(".")[0] in core_modules, f"{name} imports .{module}, outside the core"
            else:
                top = module.split(".")[0]
                assert top in sys.stdlib_module_names or top == "__future__", f"{name} imports {module}"


def test_facade_runs_without_web_or_media_stack() -> None:
    code = (
        "import sys, asyncio\n"
        "import fantasize_rtc\n"
        "from fantasize_rtc import create_rtc_server\n"
        "async def main():\n"
        "    async with create_rtc_server() as rtc:\n"
        "        await rtc.connect_peer('r', 'a'); await rtc.connect_peer('r', 'b')\n"
        "        await rtc.relay('r', 'a', {'type': 'bye', 'payload': None})\n"
        "asyncio.run(main())\n"
        f"heavy = {[h for h in HEAVY if h != 'jwt']!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


def test_core_import_pulls_in_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "import fantasize_rtc.protocol, fantasize_rtc.rooms, fantasize_rtc.errors, fantasize_rtc.config\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {list(HEAVY)!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = out.stdout.strip().strip("[]").replace("'", "").split(", ")
    # The package __init__ re-exports the facade, which verifies JWTs (PyJWT): allowed, nothing else.
    assert all(m == "" or m.startswith("jwt") for m in loaded), out.stdout
