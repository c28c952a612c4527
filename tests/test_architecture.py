"""The package's import graph, read from the source with `ast`: data flows one way.

Every `import` counts, at module level or inside a function (a function-level import is a
dependency all the same; it only runs later), except those under `if TYPE_CHECKING:` (annotations,
never executed). Importing `erase.a.b` also runs `erase/a/__init__.py`, so it counts as an import
of `erase.a` too. An "area" is a top-level part of the package (erase.train, erase.rum, ...).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import erase
from erase.objectives import Objective, ObjectiveConfig, get_objective, objective_name, objective_names
from erase.objectives.registry import register_objective

ROOT = Path(erase.__file__).parent


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Every module name `tree` imports (absolute), outside `if TYPE_CHECKING:` blocks."""
    out: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package this module is in (or is)
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            out.append(prefix)
            out += [f"{prefix}.{alias.name}" for alias in node.names]  # `from pkg import submodule`
        stack.extend(ast.iter_child_nodes(node))
    return out


def import_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between the package's modules, external top-level packages each module imports)."""
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    edges: dict[str, set[str]] = {m: set() for m in files}
    external: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        for name in _imports(ast.parse(path.read_text(encoding="utf-8")), module, path.name == "__init__.py"):
            if name.split(".")[0] != root.name:
                external[module].add(name.split(".")[0])
                continue
            parts = name.split(".")
            for k in range(2, len(parts) + 1):  # the module and every package above it
                target = ".".join(parts[:k])
                if target in files and target != module:
                    edges[module].add(target)
    return edges, external


def area(module: str) -> str:
    return ".".join(module.split(".")[:2])


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one node: nodes that reach each other."""
    reach = {n: reachable(edges, n) for n in edges}
    components = {frozenset({n} | {m for m in reach[n] if n in reach[m]}) for n in edges}
    return [set(c) for c in components if len(c) > 1]


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def area_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Area -> the other areas its modules import."""
    out: dict[str, set[str]] = {area(m): set() for m in edges}
    for m, targets in edges.items():
        out[area(m)] |= {area(t) for t in targets if area(t) != area(m)}
    return out


def _cycles_through(edges, a: str, b: str) -> list[list[str]]:
    """The area cycles that contain both `a` and `b` (the areas of each, sorted)."""
    return [sorted(c) for c in cycles(area_graph(edges)) if {a, b} <= c]


# Areas that must never sit on one import cycle. On the old tree the first two did (train/config.py
# <-> rum.py; objectives/salun.py -> train/saliency.py while train -> objectives); train/data.py ->
# audit/suites.py was a back-edge (the reachability test below), here as a pair for the future.
PAIRS = [("erase.rum", "erase.train"), ("erase.objectives", "erase.train"), ("erase.train", "erase.audit"),
         ("erase.models", "erase.zoo")]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(x.split(".")[1] for x in p))
def test_no_import_cycle_joins_two_areas(graph, pair):
    edges, _ = graph
    assert _cycles_through(edges, *pair) == []


def test_objectives_know_nothing_of_training_or_accelerate(graph):
    edges, external = graph
    objectives = [m for m in edges if area(m) == "erase.objectives"]
    assert "erase.objectives.salun_mask" in objectives  # SalUn's mask lives with SalUn
    for m in objectives:
        assert not {t for t in reachable(edges, m) if area(t) in ("erase.train", "erase.rum")}, m
        assert "accelerate" not in external[m], m


def test_training_reads_prompt_files_not_audits_and_knows_nothing_of_rum(graph):
    edges, _ = graph
    for m in (m for m in edges if area(m) == "erase.train"):
        assert not {t for t in reachable(edges, m) if area(t) in ("erase.audit", "erase.rum")}, m
    assert "erase.prompts" in edges["erase.train.data"] and "erase.prompts" in edges["erase.audit.suites"]
    assert "erase.train.trainer" in edges["erase.rum.runner"]  # RUM runs on top of the trainer


def test_the_graph_sees_function_level_and_package_imports(tmp_path):
    """The checks above can fail: a function-level back-edge closes a cycle, a TYPE_CHECKING one does not."""
    pkg = tmp_path / "erase"
    for folder in ("train", "rum"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "train" / "config.py").write_text("class RumConfig: ...\n")
    (pkg / "rum" / "__init__.py").write_text("from .runner import run\n")
    (pkg / "rum" / "runner.py").write_text("from erase.train.config import RumConfig\n")
    (pkg / "train" / "trainer.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from erase.rum.runner import run\n")
    edges, _ = import_graph(pkg)
    assert edges["erase.rum"] == {"erase.rum.runner"} and edges["erase.rum.runner"] == {"erase.train", "erase.train.config"}
    assert edges["erase.train.trainer"] == set() and _cycles_through(edges, "erase.rum", "erase.train") == []
    (pkg / "train" / "trainer.py").write_text("def run():\n    from ..rum import runner\n")  # a lazy back-edge
    edges, _ = import_graph(pkg)
    assert edges["erase.train.trainer"] == {"erase.rum", "erase.rum.runner"}
    assert _cycles_through(edges, "erase.rum", "erase.train") == [["erase.rum", "erase.train"]]


# --- the objective registry ---------------------------------------------------------------------

def test_every_objective_registers_itself_with_an_objective_config():
    names = objective_names()
    assert {"esd", "salun", "ga", "neggrad+", "ablation", "erasediff", "advunlearn"} <= set(names)
    for name in names:
        cls = get_objective(name)
        assert objective_name(cls) == name and "name" not in vars(cls)  # the key is the only name
        assert issubclass(cls.config_class, ObjectiveConfig) and cls.__module__.startswith("erase.objectives.")


def test_registering_a_taken_name_or_a_non_objective_fails():
    esd = get_objective("esd")
    with pytest.raises(ValueError, match="'esd' is already registered to erase.objectives.esd.Esd"):
        register_objective("esd", get_objective("ga"))
    assert register_objective("esd", esd) is esd and get_objective("esd") is esd  # the same class again: no-op
    with pytest.raises(TypeError, match="not an Objective subclass"):
        register_objective("nothing", dict)

    class NoConfig(Objective):
        config_class = dict

    with pytest.raises(TypeError, match="must inherit ObjectiveConfig"):
        register_objective("noconfig", NoConfig)
    assert "noconfig" not in objective_names() and "nothing" not in objective_names()


def test_run_output_and_reporting_take_values_not_the_trainer():
    """erase/train/output.py and reporting.py are handed what they write (RunFacts, the pipeline and its
    parameter kinds), so they import nothing of the trainer, not even for annotations."""
    for name in ("output", "reporting"):
        src = (ROOT / "train" / f"{name}.py").read_text(encoding="utf-8")
        tree = ast.parse(src)
        names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert "erase.train.trainer" not in names and "TYPE_CHECKING" not in src, name
