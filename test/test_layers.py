"""The package's layers, read from the source (AST: no module is imported to build the graph).

Layers, bottom up: core (with the top-level errors module) -> models -> backends -> runtime ->
ros / bags / commands / benchmarks / cli. A module may import its own layer or a lower one, never a
higher one; no two packages import each other (directly or around a longer loop) and no two
modules do either. Imports under ``if TYPE_CHECKING:`` are annotations only and do not count;
imports inside functions count (they run when the function does).

Two more checks run a fresh interpreter: the runtime loads no rclpy, and the core loads no heavy
inference runtime.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vla_accel"

LAYER = {
    "errors": 0,
    "core": 0,
    "models": 1,
    "backends": 2,
    "runtime": 3,
    "ros": 4,
    "bags": 4,
    "commands": 4,
    "benchmarks": 4,
    "serve": 4,
    "importers": 4,
    "cli": 4,
    "msg": 4,  # generated ROS messages: only the ROS-facing layer uses them
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every vla_accel module named by an import statement, TYPE_CHECKING blocks left out."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit_stmt(sub)
                continue
            visit_stmt(child)

    def visit_stmt(child: ast.AST) -> None:
        if isinstance(child, ast.Import):
            found.update(a.name for a in child.names if a.name.split(".")[0] == "vla_accel")
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (child.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "vla_accel":
                return
            for alias in child.names:
                found.add(f"{base}.{alias.name}")
        visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    sources = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        sources[_module_name(path)] = path
    known = set(sources)
    graph: dict[str, set[str]] = {}
    for module, path in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = set()
        for name in _imports(tree, module, path.name == "__init__.py"):
            # `from pkg import name` names a submodule or an attribute of pkg: keep the longest module
            while name not in known and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in known and name != module:
                targets.add(name)
            elif name.startswith("vla_accel.msg"):
                targets.add("vla_accel.msg")
        graph[module] = targets
    return graph


def _layer_key(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_graph_is_read_from_the_source():
    graph = import_graph()
    # the walk sees module-level, function-level and relative imports
    assert "vla_accel.core.types" in graph["vla_accel.core.engine"]
    assert len(graph) > 50


def test_no_module_level_cycle():
    cycle = _find_cycle(import_graph())
    assert cycle is None, "import cycle between modules: " + " -> ".join(cycle)


def test_no_package_level_cycle():
    packages: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        src = _layer_key(module)
        for target in targets:
            dst = _layer_key(target)
            if src and dst and src != dst:
                packages.setdefault(src, set()).add(dst)
    cycle = _find_cycle(packages)
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


def test_no_layer_imports_upward():
    upward = []
    for module, targets in sorted(import_graph().items()):
        src = _layer_key(module)
        if src not in LAYER:
            continue
        for target in sorted(targets):
            dst = _layer_key(target)
            if dst in LAYER and LAYER[dst] > LAYER[src]:
                upward.append(f"{module} -> {target}")
    assert not upward, "a lower layer imports a higher one:\n" + "\n".join(upward)


def test_every_package_has_a_layer():
    keys = {_layer_key(m) for m in import_graph()} - {""}
    assert keys <= set(LAYER), f"packages without a layer in this test: {sorted(keys - set(LAYER))}"


def _loaded_after(statement: str, watched: tuple[str, ...]) -> list[str]:
    code = (
        f"import sys; {statement}; "
        f"print(','.join(m for m in {watched!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [m for m in done.stdout.strip().splitlines()[-1].split(",") if m] if done.stdout.strip() else []


def test_runtime_imports_no_ros():
    loaded = _loaded_after("import vla_accel.runtime", ("rclpy", "rcl_interfaces", "sensor_msgs", "vla_accel.msg"))
    assert loaded == [], f"importing vla_accel.runtime loaded {loaded}"


def test_core_imports_no_heavy_runtime():
    statement = "import " + ", ".join(
        sorted(_module_name(p) for p in (PACKAGE / "core").glob("*.py") if p.name != "__init__.py")
    )
    loaded = _loaded_after(statement, ("torch", "onnxruntime", "openvino", "tensorrt", "rclpy", "ai_edge_litert"))
    assert loaded == [], f"importing vla_accel.core loaded {loaded}"


def test_deliberate_errors_are_package_error_classes():
    """Every ``raise SomeError(...)`` in the package names a vla_accel.errors class (or a class
    defined in the package), never a bare builtin: callers can catch VlaAccelError and read a reason."""
    import vla_accel.errors as errors

    own = {name for name in dir(errors) if isinstance(getattr(errors, name), type)}
    builtin = {"ValueError", "RuntimeError", "TypeError", "KeyError", "Exception", "OSError", "IndexError"}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                name = node.exc.func.id
                if name in builtin and name not in own:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} raise {name}")
    assert not found, "plain builtin errors raised on purpose:\n" + "\n".join(found)
