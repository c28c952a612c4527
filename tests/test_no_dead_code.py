"""Every module under erase/ is reachable from what users run: the `erase` command (erase.cli, which
imports erase/commands/* by name), `python -m erase`, the package's own `__init__`, scripts/ and the
quickstart notebook. A module that only tests import is dead code to users.

Imports are read with `ast` (module- and function-level, absolute and relative); a string that names
a module (the CLI's command table, "module:Class" registry entries) or a sibling module's short name
(a registry's list of built-in modules it imports with importlib) counts as an import too.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST, this: str, is_package: bool) -> set[str]:
    """Dotted names `this` imports (each import also names its parent packages) or names by string."""
    package = this if is_package else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            found.add(f"{package}.{node.value}")  # a sibling named by string (importlib)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value.partition(":")[0])  # "pkg.module" or an entry-point style "pkg.module:Class"
    with_parents = set(found)
    for name in found:
        while "." in name:
            name = name.rpartition(".")[0]
            with_parents.add(name)
    return with_parents


def unreachable_modules(package_dir: Path, entry_points: list[str], extra_sources: list[str]) -> list[str]:
    """Modules of the package at `package_dir` that no chain of imports reaches from the entry points
    (module names) or from the code in `extra_sources` (scripts, notebook cells)."""
    root = package_dir.parent
    modules = {_module_name(p, root): p for p in package_dir.rglob("*.py")}
    edges = {name: _imports(ast.parse(p.read_text()), name, p.name == "__init__.py") for name, p in modules.items()}
    todo = [*entry_points]
    for src in extra_sources:
        todo += _imports(ast.parse(src), "__main__", False)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        todo += edges[name]
    return sorted(set(modules) - seen)


def _notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    lines = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    return "\n".join(line for line in "\n".join(lines).splitlines() if not line.lstrip().startswith(("!", "%")))


def test_every_module_is_reachable_from_what_users_run():
    extra = [p.read_text() for p in sorted((ROOT / "scripts").glob("*.py"))]
    extra += [_notebook_code(p) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    dead = unreachable_modules(ROOT / "erase", ["erase", "erase.cli", "erase.__main__"], extra)
    assert dead == [], f"modules nothing users run imports (delete them or import them): {dead}"


def test_an_orphan_module_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg import used\n")
    (pkg / "used.py").write_text("def f():\n    from .sub import inner  # function-level, relative\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "inner.py").write_text("NAMES = ('plugin',)  # importlib-style\nTABLE = {'x': 'pkg.table:Cls'}\n")
    (pkg / "sub" / "plugin.py").write_text("")
    (pkg / "table.py").write_text("class Cls: ...\n")
    (pkg / "orphan.py").write_text("import pkg.used\n")
    (pkg / "script_only.py").write_text("")
    assert unreachable_modules(pkg, ["pkg"], ["import pkg.script_only"]) == ["pkg.orphan"]
    assert unreachable_modules(pkg, ["pkg"], []) == ["pkg.orphan", "pkg.script_only"]
