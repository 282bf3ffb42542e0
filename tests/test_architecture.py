"""The package's shape, checked: layers, cycles, sizes, and every wire name defined once.

The layers are read from docs/architecture.md (the table between the
``layers:begin`` / ``layers:end`` markers), so the map and this test cannot drift.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from exprsn_ipc.protocol.events import BusEvent, SioEvent

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "exprsn_ipc"
DOC = ROOT / "docs" / "architecture.md"

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


# --------------------------------------------------------------------------- #
# The package as a graph
# --------------------------------------------------------------------------- #


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    #: (imported module, line, kind) where kind is "top", "lazy" (inside a function) or "typing".
    imports: list[tuple[str, int, str]] = field(default_factory=list)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_imports(node: ast.AST, kind: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, kind
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.body:
                yield from _walk_imports(ast.Module(body=[sub], type_ignores=[]), "typing")
            for sub in child.orelse:
                yield from _walk_imports(ast.Module(body=[sub], type_ignores=[]), kind)
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk_imports(child, "lazy" if kind == "top" else kind)
        else:
            yield from _walk_imports(child, kind)


def load_modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        modules[name] = Module(name, path, path.name == "__init__.py")
    reexports = _reexports(modules)
    for module in modules.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"))
        package = module.name if module.is_package else module.name.rpartition(".")[0]
        for node, kind in _walk_imports(tree, "top"):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import sub` imports the submodule pkg.sub when there is one; a name the
                # package only re-exports counts as an import of the module that defines it.
                targets = []
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else reexports.get(sub, base))
            for target in targets:
                if target.split(".")[0] == "exprsn_ipc":
                    module.imports.append((target, node.lineno, kind))
    return modules


def _reexports(modules: dict[str, Module]) -> dict[str, str]:
    """``pkg.Name`` -> the module a package's ``__init__`` takes ``Name`` from."""
    found: dict[str, str] = {}
    for module in modules.values():
        if not module.is_package:
            continue
        for node in ast.parse(module.path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("exprsn_ipc"):
                for alias in node.names:
                    found[f"{module.name}.{alias.asname or alias.name}"] = str(node.module)
    return found


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


# --------------------------------------------------------------------------- #
# Layers, as the architecture document states them
# --------------------------------------------------------------------------- #


def load_layers() -> list[tuple[int, str]]:
    """(layer number, module prefix) rows of the table in docs/architecture.md."""
    text = DOC.read_text(encoding="utf-8")
    table = text.split("<!-- layers:begin -->", 1)[1].split("<!-- layers:end -->", 1)[0]
    rows: list[tuple[int, str]] = []
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].isdigit():
            continue
        for prefix in re.findall(r"`([\w.]+)`", cells[1]):
            rows.append((int(cells[0]), prefix))
    assert rows, "docs/architecture.md has no layer table"
    return rows


def layer_of(name: str, layers: list[tuple[int, str]]) -> int | None:
    best: tuple[int, int] | None = None
    for number, prefix in layers:
        matches = name == prefix or name.startswith(prefix + ".")
        if matches and (best is None or len(prefix) > best[1]):
            best = (number, len(prefix))
    return None if best is None else best[0]


def test_every_module_has_a_layer() -> None:
    layers = load_layers()
    missing = [name for name in load_modules() if name != "exprsn_ipc" and layer_of(name, layers) is None]
    assert missing == [], f"modules missing from the layer table of docs/architecture.md: {missing}"


def test_imports_only_flow_downward() -> None:
    layers = load_layers()
    modules = load_modules()
    upward = []
    for module in modules.values():
        own = layer_of(module.name, layers)
        if own is None:
            continue
        for target, line, kind in module.imports:
            if target == "exprsn_ipc":
                continue  # `from exprsn_ipc import __version__`: the one name the root defines
            theirs = layer_of(target, layers)
            if theirs is not None and theirs > own:
                upward.append(
                    f"{module.path.relative_to(ROOT)}:{line} ({kind}) imports {target}: layer {own} -> {theirs}"
                )
    assert upward == [], "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    """Imports executed at import time (module level) form no cycle.

    Importing ``a.b.c`` first runs ``a/__init__`` and ``a/b/__init__``, so an import
    also depends on the packages around its target, except those around the
    importer itself (Python has already started them).
    """
    modules = load_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module in modules.values():
        mine = set(ancestors(module.name)) | {module.name}
        for target, _line_no, kind in module.imports:
            if kind != "top":
                continue
            for dep in [*ancestors(target), target]:
                if dep in modules and dep not in mine:
                    graph[module.name].add(dep)
    cycles = _strongly_connected(graph)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(sorted(c)) for c in cycles)


def test_a_module_never_imports_from_its_own_package_init() -> None:
    """A package's ``__init__`` only re-exports; importing from it inside the package invites cycles."""
    offenders = []
    for module in load_modules().values():
        for target, line, kind in module.imports:
            if (
                kind == "top"
                and target in ancestors(module.name)
                and target != "exprsn_ipc"
                and not module.name.endswith("__main__")
            ):
                offenders.append(f"{module.path.relative_to(ROOT)}:{line} imports its package {target}")
    assert offenders == []


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        # Iterative Tarjan: the graph is small, but recursion depth should not depend on it.
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(component)

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


# --------------------------------------------------------------------------- #
# Every module imports on its own
# --------------------------------------------------------------------------- #

_IMPORT_EACH = r"""
import os, sys, traceback
# argv: the dependencies to preload (comma-separated), then the modules to import one per child.
for dependency in filter(None, sys.argv[1].split(",")):
    try:
        __import__(dependency)
    except Exception:
        pass  # the child that needs it imports it again, and reports the failure
ours = sorted(name for name in sys.modules if name == sys.argv[2] or name.startswith(sys.argv[2] + "."))
if ours:
    sys.exit("preloading the dependencies imported the package itself: " + ", ".join(ours))
pending = list(reversed(sys.argv[3:]))
running, failed = {}, []
width = max(1, os.cpu_count() or 1)  # one child per core: the imports are CPU-bound
while pending or running:
    while pending and len(running) < width:
        name = pending.pop()
        pid = os.fork()
        if pid == 0:
            try:
                __import__(name)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        running[pid] = name
    pid, status = os.wait()
    name = running.pop(pid)
    if status != 0:
        failed.append(name)
print("FAILED:" + ",".join(sorted(failed)))
"""


def dependencies_of(package: Path, root_name: str) -> list[str]:
    """The modules other than ``root_name``'s own that ``package``'s modules import at module level."""
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node, kind in _walk_imports(ast.parse(path.read_text(encoding="utf-8")), "top"):
            if kind != "top":
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif not node.level and node.module:
                found.add(node.module)
    return sorted(name for name in found if name.split(".")[0] != root_name)


def import_each(names: list[str], *, root_name: str, preload: list[str], cwd: Path, **env: str) -> tuple[str, str]:
    """Import each of ``names`` first, in a child forked from an interpreter that has imported
    ``preload`` and nothing of ``root_name``; returns (the modules that failed, stderr)."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, ",".join(preload), root_name, *names],
        capture_output=True,
        text=True,
        timeout=220,
        env={**os.environ, **env},
        check=False,
        cwd=cwd,
    )
    failed = done.stdout.rpartition("FAILED:")[2].strip() if done.returncode == 0 else f"(exit {done.returncode})"
    return failed, done.stderr


@pytest.mark.timeout(240)
def test_every_module_imports_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """Each module imported first, alone: an import that only works after another one fails here.

    The parent interpreter imports the third-party and standard-library modules the
    package imports at module level, but nothing of the package, and forks a child
    per module: each child starts with none of our modules loaded, and only pays for
    its own imports.
    """
    names = [name for name in load_modules() if not name.endswith("__main__")]
    failed, stderr = import_each(
        names,
        root_name="exprsn_ipc",
        preload=dependencies_of(PACKAGE, "exprsn_ipc"),
        cwd=tmp_path,  # the README's example service reads .env and may write a development key here
        PYTHONWARNINGS="error::DeprecationWarning:exprsn_ipc",
    )
    assert failed == "", f"modules that fail to import alone: {failed}\n{stderr[-4000:]}"


def test_the_import_check_catches_a_module_that_only_imports_after_another(tmp_path: Path) -> None:
    """The check above, on a package of two modules where ``late`` needs ``early`` imported first."""
    package = tmp_path / "orderpkg"
    package.mkdir()
    (package / "__init__.py").write_text("", "utf-8")
    (package / "early.py").write_text("import json\nimport orderpkg\n\norderpkg.READY = True\n", "utf-8")
    (package / "late.py").write_text("import orderpkg\n\nassert orderpkg.READY\n", "utf-8")
    preload = dependencies_of(package, "orderpkg")
    assert preload == ["json"]
    failed, stderr = import_each(
        ["orderpkg", "orderpkg.early", "orderpkg.late"],
        root_name="orderpkg",
        preload=[*preload, "orderpkg.early"],
        cwd=tmp_path,
    )
    assert failed.startswith("(exit"), "a preload that imports the package itself must be refused"
    failed, stderr = import_each(
        ["orderpkg", "orderpkg.early", "orderpkg.late"], root_name="orderpkg", preload=preload, cwd=tmp_path
    )
    assert failed == "orderpkg.late", stderr


# --------------------------------------------------------------------------- #
# Sizes
# --------------------------------------------------------------------------- #


def test_no_module_is_too_long() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_too_long() -> None:
    long = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = length
    assert long == {}, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


# --------------------------------------------------------------------------- #
# Wire names, defined once
# --------------------------------------------------------------------------- #

#: The modules allowed to spell wire names: the event names, and the Redis keys.
EVENT_HOME = PACKAGE / "protocol" / "events.py"
KEY_HOMES = (PACKAGE / "transport" / "redis" / "keys.py", PACKAGE / "protocol" / "constants.py")
#: A Redis key, channel or Socket.IO/bus event spelled out: ``ipc:...``, ``crud:...``, ``jsonlex:...``.
WIRE_NAME = re.compile(r"^(ipc|crud|jsonlex):")


def _string_constants(tree: ast.AST) -> Iterator[tuple[int, str]]:
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_every_wire_name_is_defined_in_one_module() -> None:
    events = {member.value for member in SioEvent} | {member.value for member in BusEvent if ":" in member.value}
    stray = []
    for path in PACKAGE.rglob("*.py"):
        if path == EVENT_HOME or path in KEY_HOMES:
            continue
        for line, value in _string_constants(ast.parse(path.read_text(encoding="utf-8"))):
            if value in events or WIRE_NAME.match(value):
                stray.append(f"{path.relative_to(ROOT)}:{line} {value!r}")
    assert stray == [], "wire names spelled outside protocol/events.py and the key modules:\n" + "\n".join(stray)


def test_event_and_key_homes_do_not_repeat_a_name() -> None:
    seen: dict[str, str] = {}
    repeated = []
    for path in (EVENT_HOME, *KEY_HOMES):
        if not path.exists():
            continue
        for line, value in _string_constants(ast.parse(path.read_text(encoding="utf-8"))):
            if WIRE_NAME.match(value):
                where = f"{path.relative_to(ROOT)}:{line}"
                if value in seen:
                    repeated.append(f"{value!r} at {seen[value]} and {where}")
                seen[value] = where
    assert repeated == []
