"""No import cycles among genomeconv's modules (module-level and function-level imports alike,
a submodule's import of its own package included), every models module imports on its own in a
fresh interpreter, and no test module imports another."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli_env

PACKAGE = Path(__file__).resolve().parents[1] / "genomeconv"


def _name(f: Path) -> str:
    parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the genomeconv modules it imports anywhere in its text: `from . import x`
    inside a package imports the package (its __init__) too, and
    `importlib.import_module("genomeconv.x...")` counts."""
    mods = {_name(f): f for f in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) ==
                  "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
                targets = [str(node.args[0].value)]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != m:
                    graph[m].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module."""
    reach = {m: set() for m in graph}
    for m in graph:
        todo = list(graph[m])
        while todo:
            n = todo.pop()
            if n not in reach[m]:
                reach[m].add(n)
                todo.extend(graph[n])
    found = {frozenset({m} | {n for n in reach[m] if m in reach[n]}) for m in graph
             if m in reach[m]}
    return sorted(found, key=sorted)


def test_no_import_cycles():
    assert [sorted(c) for c in cycles(import_graph())] == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_function_level_and_package_imports_are_edges():
    graph = import_graph()
    assert "genomeconv.kernels.conv" in graph["genomeconv.kernels.modules"]  # module level
    assert "genomeconv.kernels.cuda" in graph["genomeconv.kernels.conv"]  # inside a function
    assert "genomeconv.commands.embed" in graph["genomeconv.cli"]


MODELS_MODULES = sorted(m for m in import_graph() if m.startswith("genomeconv.models"))
# Imports each module named on the command line in a fresh fork of one process that has loaded
# only the third-party libraries (a process each cost ~2 s of torch import): the genomeconv
# modules a fork sees are those its one import pulls in. Prints "module<TAB>error" per failure.
IMPORT_EACH_ALONE = """
import os, sys, traceback
import numpy, torch
for module in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            __import__(module)
        except BaseException:
            os.write(write, traceback.format_exc().encode())
            os._exit(1)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        text = fh.read()
    if os.waitpid(pid, 0)[1]:
        print(module, repr(text or "died"), sep="\t")
"""


@pytest.fixture(scope="module")
def import_failures() -> dict[str, str]:
    run = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, *MODELS_MODULES],
                         env=cli_env(private_ray=True), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    return dict(line.split("\t", 1) for line in run.stdout.splitlines())


@pytest.mark.parametrize("module", MODELS_MODULES)
def test_models_modules_import_alone(module, import_failures):
    assert module not in import_failures, import_failures[module]


def test_a_module_that_fails_to_import_is_reported(tmp_path):
    (tmp_path / "broken_mod.py").write_text("import genomeconv.models\nraise ImportError('x')\n")
    env = cli_env(private_ray=True)
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    run = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, "broken_mod",
                          "genomeconv.models"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.stdout.startswith("broken_mod\t") and "ImportError" in run.stdout, run.stdout
    assert "genomeconv.models\t" not in run.stdout


def test_no_test_module_imports_another():
    """Code shared by tests lives in tests/helpers.py (or conftest.py): a test module that
    imports another ties their fixtures together and runs the other's import for every user."""
    tests = Path(__file__).resolve().parent
    modules = {p.stem for p in tests.glob("test_*.py")}
    found = [f"{path.name}:{node.lineno}" for path in sorted(tests.glob("*.py"))
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.ImportFrom) and node.module in modules
             or isinstance(node, ast.Import) and any(a.name in modules for a in node.names)]
    assert found == []
