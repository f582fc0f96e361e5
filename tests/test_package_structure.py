"""The package's import structure: no import cycles, no hidden imports inside functions.

Both checks read the source with :mod:`ast` and import nothing, so they see every module,
including ones whose dependencies are missing, and cannot be fooled by import order.

Run ``python -m tests.test_package_structure`` to print the counts.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, which pytest itself requires there
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "fedpriv"

# Distribution names whose import name differs from the normalised distribution name.
_IMPORT_NAMES = {
    "hydra-core": "hydra",
    "dp-accounting": "dp_accounting",
    "scikit-learn": "sklearn",
    "orbax-checkpoint": "orbax",
}

# Function-level imports that are allowed: (module, imported top-level package or module
# prefix) -> why it has to wait until the function runs.
ALLOWED_FUNCTION_IMPORTS = {
    ("fedpriv._cpu_devices", "jax"): (
        "asks whether JAX's backends have started only when jax is already imported, so "
        "calling expose_cpu_devices() never imports JAX itself"
    ),
    ("fedpriv.accounting._rdp", "opacus"): (
        "opacus pulls in torch (seconds, hundreds of MB) and serves only the 'opacus' "
        "accountant backend, so it loads when that backend is chosen"
    ),
    ("fedpriv.accounting.accountants", "opacus"): (
        "opacus pulls in torch and serves only the 'opacus' and 'prv' accountant backends"
    ),
    ("fedpriv.audit.accounting", "opacus"): (
        "opacus pulls in torch and serves only the audit's cross-check against Opacus"
    ),
}


@dataclass(frozen=True)
class Import:
    """One import statement's target inside the package or outside it."""

    module: str  # importing module
    target: str  # imported module (for ``from a import b``: ``a.b`` when that is a module)
    line: int
    function_level: bool


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root: Path) -> dict[str, Path]:
    return {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _string_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "text"`` assignments (names a dynamic import may be given)."""
    out = {}
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out.update((t.id, value.value) for t in targets if isinstance(t, ast.Name))
    return out


def _dynamic_target(call: ast.Call, constants: dict[str, str]) -> str | None:
    """The module an ``importlib.import_module(...)`` or ``__import__(...)`` call imports,
    when its name is a string literal or a module-level string constant."""
    func = call.func
    dynamic = (
        isinstance(func, ast.Attribute)
        and func.attr == "import_module"
        and isinstance(func.value, ast.Name)
        and func.value.id == "importlib"
    ) or (isinstance(func, ast.Name) and func.id in ("import_module", "__import__"))
    if not dynamic or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.Name):
        return constants.get(arg.id)
    return None


def _import_nodes(tree: ast.Module):
    """Yields (node, function_level) for every import that runs, skipping TYPE_CHECKING.

    Calls of ``importlib.import_module`` and ``__import__`` count as imports too (node is
    the call), so that a dynamic import does not hide a dependency.
    """

    def walk(node: ast.AST, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for orelse in child.orelse:
                    yield from walk_one(orelse, in_function)
                continue
            yield from walk_one(child, in_function)

    def walk_one(node: ast.AST, in_function: bool):
        if isinstance(node, ast.Import | ast.ImportFrom | ast.Call):
            yield node, in_function
            if not isinstance(node, ast.Call):
                return
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from walk(node, inner)

    yield from walk(tree, False)


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def collect_imports(root: Path) -> tuple[set[str], list[Import]]:
    """Returns the package's module names and every import statement's targets."""
    modules = _modules(root)
    found: list[Import] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        constants = _string_constants(tree)
        for node, function_level in _import_nodes(tree):
            if isinstance(node, ast.Call):
                target = _dynamic_target(node, constants)
                targets = [target] if target else []
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    base = _resolve_relative(module, is_package, node.level, node.module)
                targets = []
                for alias in node.names:
                    sub = f"{base}.{alias.name}" if base else alias.name
                    targets.append(sub if sub in modules else base)
            for target in dict.fromkeys(targets):
                found.append(Import(module, target, node.lineno, function_level))
    return set(modules), found


def import_graph(root: Path) -> dict[str, dict[str, list[int]]]:
    """Intra-package edges ``importer -> imported -> lines``, function-level ones included.

    ``from fedpriv.a import b`` is an edge to ``fedpriv.a.b`` when that is a module and to
    ``fedpriv.a`` otherwise. Importing ``fedpriv.a.b`` also runs ``fedpriv/a/__init__.py``,
    so there is an edge to each parent package too, except the importer's own parents: those
    are already in ``sys.modules`` when the importer runs.
    """
    modules, imports = collect_imports(root)
    graph: dict[str, dict[str, list[int]]] = {m: {} for m in modules}
    for imp in imports:
        target = imp.target
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if not target or target.split(".")[0] != PACKAGE:
            continue
        parts = target.split(".")
        for depth in range(1, len(parts) + 1):
            node = ".".join(parts[:depth])
            if node == imp.module or imp.module.startswith(node + "."):
                continue
            graph[imp.module].setdefault(node, []).append(imp.line)
    return graph


def strongly_connected_components(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); returns the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def required_dependencies(pyproject: Path) -> set[str]:
    """Import names of ``[project] dependencies`` (optional extras are not included)."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    names = set()
    for requirement in project["dependencies"]:
        dist = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()
        names.add(_IMPORT_NAMES.get(dist, dist.replace("-", "_")))
    return names


def function_level_imports(root: Path, pyproject: Path) -> list[Import]:
    """Function-level imports of a package module or a required dependency, not allowed."""
    guarded = required_dependencies(pyproject) | {PACKAGE}
    _, imports = collect_imports(root)
    bad = []
    for imp in imports:
        top = imp.target.split(".")[0]
        if not imp.function_level or top not in guarded:
            continue
        if (imp.module, top) in ALLOWED_FUNCTION_IMPORTS:
            continue
        bad.append(imp)
    return bad


def _format_cycle(component: list[str], graph: dict[str, dict[str, list[int]]]) -> str:
    members = set(component)
    edges = [
        f"    {src} -> {dst} (line {', '.join(map(str, lines))})"
        for src in component
        for dst, lines in sorted(graph[src].items())
        if dst in members
    ]
    return " <-> ".join(component) + "\n" + "\n".join(edges)


def import_report(root: Path = REPO / PACKAGE) -> dict[str, int]:
    """Counts of import-structure violations under ``root``.

    Returns:
      ``cycles``: strongly connected components of more than one module;
      ``modules_in_cycles``: modules in those components;
      ``function_level_imports``: disallowed function-level imports;
      ``total``: ``cycles + function_level_imports``.
    """
    pyproject = root.parent / "pyproject.toml"
    components = strongly_connected_components(import_graph(root))
    function_level = function_level_imports(root, pyproject)
    return {
        "cycles": len(components),
        "modules_in_cycles": sum(len(c) for c in components),
        "function_level_imports": len(function_level),
        "total": len(components) + len(function_level),
    }


def test_no_import_cycles():
    graph = import_graph(REPO / PACKAGE)
    components = strongly_connected_components(graph)
    assert not components, "import cycles:\n" + "\n".join(
        _format_cycle(c, graph) for c in components
    )


def test_no_function_level_imports():
    bad = function_level_imports(REPO / PACKAGE, REPO / "pyproject.toml")
    assert not bad, (
        "imports inside functions (move them to the top of the module, or add an entry with "
        "a reason to ALLOWED_FUNCTION_IMPORTS):\n"
        + "\n".join(f"  {imp.module}:{imp.line} imports {imp.target}" for imp in bad)
    )


def test_allow_list_entries_are_used():
    _, imports = collect_imports(REPO / PACKAGE)
    used = {(imp.module, imp.target.split(".")[0]) for imp in imports if imp.function_level}
    stale = sorted(set(ALLOWED_FUNCTION_IMPORTS) - used)
    assert not stale, f"allow-list entries no longer needed: {stale}"


def test_graph_sees_submodule_and_relative_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "a.py").write_text("from fedpriv.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    import fedpriv.sub.a\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fedpriv.sub import a\n"
    )
    graph = import_graph(pkg)
    assert graph["fedpriv.sub"] == {"fedpriv.sub.b": [1]}
    assert graph["fedpriv.sub.a"] == {"fedpriv.sub.b": [1]}
    assert graph["fedpriv.sub.b"] == {"fedpriv.sub.a": [2]}
    assert graph["fedpriv.c"] == {}
    (pkg / "d.py").write_text("from fedpriv.sub.a import x\n")
    assert import_graph(pkg)["fedpriv.d"] == {"fedpriv.sub": [1], "fedpriv.sub.a": [1]}
    (pkg / "e.py").write_text(
        'import importlib\nNAME = "fedpriv.c"\ndef f():\n    return importlib.import_module(NAME)\n'
    )
    _, imports = collect_imports(pkg)
    assert Import("fedpriv.e", "fedpriv.c", 4, True) in imports
    assert strongly_connected_components(graph) == [["fedpriv.sub.a", "fedpriv.sub.b"]]


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else REPO / PACKAGE
    for name, count in import_report(root).items():
        print(f"{name}: {count}")


# The layers that build and run a round receive typed settings (fedpriv.settings), never a
# configuration dict: no `cfg[...]`, `cfg.get(...)` or `*_cfg` / `config` parameters there.
TYPED_LAYERS = ("fedpriv/fl", "fedpriv/privacy/secagg", "fedpriv/privacy/plan.py")


def _config_reads(tree: ast.Module) -> list[tuple[int, str]]:
    def configish(node: ast.expr) -> str | None:
        name = (
            node.id
            if isinstance(node, ast.Name)
            else node.attr
            if isinstance(node, ast.Attribute)
            else ""
        )
        return name if re.search(r"(^|_)cfg$|^config$", name) else None

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and configish(node.value):
            found.append((node.lineno, f"{configish(node.value)}[...]"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and configish(node.func.value)
        ):
            found.append((node.lineno, f"{configish(node.func.value)}.get(...)"))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for a in node.args.args + node.args.kwonlyargs:
                if re.search(r"(^|_)cfg$", a.arg):
                    found.append((node.lineno, f"{node.name}({a.arg})"))
    return found


def test_round_building_layers_take_typed_settings():
    bad = []
    for layer in TYPED_LAYERS:
        path = REPO / layer
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            for line, what in _config_reads(ast.parse(file.read_text())):
                bad.append(f"{file.relative_to(REPO)}:{line}: {what}")
    assert not bad, "configuration dicts below the edge:\n" + "\n".join(bad)


def test_config_read_detector_sees_reads(tmp_path):
    tree = ast.parse(
        "def f(client_cfg):\n    return cfg['a'] + self.cfg.get('b') + client_cfg['c']\n"
    )
    kinds = sorted(what for _, what in _config_reads(tree))
    assert kinds == ["cfg.get(...)", "cfg[...]", "client_cfg[...]", "f(client_cfg)"]
