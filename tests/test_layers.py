"""The layers of docs/architecture.md: a module imports only modules of its own layer or lower ones
(lazy imports inside functions and ``TYPE_CHECKING`` imports included), no two files import each
other in a circle, the core imports only the standard library, and nothing below the transports
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


#: docs/architecture.md, "Layers". A module not listed here fails the test: place it.
LAYERS: dict[str, int] = {
    # 1 core: pure, synchronous; the two helpers with small dependencies (PyJWT; msgspec, orjson) too
    "errors": 1,
    "config": 1,
    "protocol": 1,
    "rooms": 1,
    "events": 1,
    "ratelimit": 1,
    "_version": 1,
    "_resources": 1,
    "auth": 1,
    "_json": 1,
    "counters": 1,
    "logs": 1,
    # 2 backends
    "backends": 2,
    # 3 the facade
    "server": 3,
    "hub": 3,
    # 4 transports
    "web": 4,
    "_aiohttp_compat": 4,
    "serving": 4,
    "tls": 4,
    # 5 media
    "media": 5,
    # 6 what assembles and uses the rest
    "app": 6,
    "metrics": 6,
    "cli": 6,
    "client": 6,
    "call": 6,
    "selftest": 6,
    "__init__": 6,
    "__main__": 6,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> int:
    parts = module.split(".")[1:] or ["__init__"]
    layer = LAYERS.get(parts[0])
    assert layer is not None, f"{module} is in no layer: add it to LAYERS (and docs/architecture.md)"
    return layer


def _targets(module: str, path: Path) -> set[str]:
    """The package's modules ``module`` imports, anywhere in the file (functions, TYPE_CHECKING)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            for alias in node.names:
                sub = f"{base_name}.{alias.name}"
                found.add(sub if sub in MODULES else base_name)
    return {t for t in found if t in MODULES and t != module}


GRAPH = {module: _targets(module, path) for module, path in MODULES.items()}


def test_every_module_imports_only_its_layer_or_lower() -> None:
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_no_import_circles_between_files() -> None:
    # Tarjan's strongly connected components: any with more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert circles == []


def test_the_transport_alone_never_imports_the_media_stack() -> None:
    code = (
        "import sys\n"
        "from fantasize_rtc.web import create_app\n"
        "create_app()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiortc', 'av', 'aioice')"
        " or m.startswith('fantasize_rtc.media')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_layer_check_sees_lazy_imports() -> None:
    """The checker itself: a function-level import is an import (it once hid web -> media)."""
    assert "fantasize_rtc.media" in GRAPH["fantasize_rtc.app"]


def test_modules_import_only_what_the_other_module_exports() -> None:
    """A name one module takes from another is in that module's ``__all__`` (its public face),
    unless it is private (``_name``), so ``__all__`` says what the package really uses."""
    missing = []
    for module, path in MODULES.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            parts = package.split(".")
            base = ".".join([*parts[: len(parts) - node.level + 1], node.module or ""]).strip(".")
            if base not in MODULES:
                continue
            exported = _exports(MODULES[base])
            for alias in node.names:
                name = alias.name
                if exported is None or name.startswith("_") or f"{base}.{name}" in MODULES:
                    continue
                if name not in exported:
                    missing.append(f"{module} imports {name} from {base}, which does not list it in __all__")
    assert missing == []


def _exports(path: Path) -> set[str] | None:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            elements = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else []
            return {elt.value for elt in elements if isinstance(elt, ast.Constant) and isinstance(elt.value, str)}
    return None
