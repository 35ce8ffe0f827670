"""The import graph keeps DESIGN.md's layers: arrows point down, and each layer imports only what its extras install.

The core (``rlopt`` itself) installs with torch alone, so it may import torch and the standard library only;
``rlopt.envs`` may add the ``rl`` extra; and so on up. The contracts of ``[tool.importlinter]`` in
pyproject.toml are checked here too, so a broken arrow fails the test suite, not only ``lint-imports``.
"""

from __future__ import annotations

import ast
import doctest
import re
import sys
from importlib import metadata
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
DIST = metadata.distribution("torch-rlopt")
LAYER_FOLDERS = {"envs": "rlopt.envs", "agents": "rlopt.agents", "bilevel": "rlopt.bilevel", "tools": "rlopt.tools"}
#: the extras each layer's imports may come from (the base requirements are always allowed)
LAYER_EXTRAS = {
    "core": set(),
    "rlopt.tools": {"rl", "bilevel"},
    "rlopt.envs": {"rl", "math"},
    "rlopt.agents": {"rl", "hf", "math"},
    "rlopt.bilevel": {"rl", "bilevel", "higher"},
}


def _requirements(extra: str | None) -> set[str]:
    names = set()
    for requirement in DIST.requires or []:
        spec, _, marker = requirement.partition(";")
        found = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        if (found.group(1) if found else None) == extra:
            names.add(re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", spec.strip()).group(0)).lower())
    return names


def _layer(module: str) -> str:
    return next((layer for layer in LAYER_EXTRAS if layer != "core" and module.startswith(layer)), "core")


def test_the_layer_contracts_hold() -> None:
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_each_layer_imports_only_what_its_extras_install() -> None:
    graph = grimp.build_graph("rlopt", include_external_packages=True)
    to_dist = metadata.packages_distributions()
    base = _requirements(None)
    violations = []
    for module in sorted(graph.modules):
        if not module.startswith("rlopt"):
            continue
        layer = _layer(module)
        allowed = base | {name for extra in LAYER_EXTRAS[layer] for name in _requirements(extra)}
        for imported in graph.find_modules_directly_imported_by(module):
            top = imported.split(".")[0]
            if top == "rlopt" or top in sys.stdlib_module_names:
                continue
            dists = {re.sub(r"[-_.]+", "-", d).lower() for d in to_dist.get(top, [top])}
            if not dists & allowed:
                violations.append(f"{module} imports {imported} ({', '.join(sorted(dists))}; layer {layer} allows "
                                  f"{', '.join(sorted(allowed))})")
    assert not violations, "\n".join(violations)


def test_importing_the_core_loads_no_other_layer_or_extra() -> None:
    import subprocess

    code = ("import sys, rlopt, rlopt.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in {'gymnasium', "
            "'stable_baselines3', 'sklearn', 'matplotlib', 'tensorboard', 'transformers', 'numpy', 'yaml'} or "
            "m.startswith(('rlopt.envs', 'rlopt.agents', 'rlopt.bilevel', 'rlopt.tools'))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    # torch imports numpy itself when it is installed: only the project's own layers and extras count
    assert [m for m in ast.literal_eval(out) if not m.startswith("numpy")] == []


def _python_files() -> list[Path]:
    folders = ["rlopt", *LAYER_FOLDERS, "tests", "examples", "benchmarks"]
    files = [f for folder in folders for f in (ROOT / folder).rglob("*.py")]
    return [f for f in files if not (f.relative_to(ROOT).parts[0] == "rlopt" and f.relative_to(ROOT).parts[1]
                                     in LAYER_FOLDERS)]


def test_no_code_imports_a_layer_by_its_folder_name() -> None:
    """``import envs`` works from a checkout's root by accident (the folder is on sys.path); installed, only
    ``rlopt.envs`` exists, so every import names the installed module."""
    bare = []
    parser = doctest.DocTestParser()
    for file in _python_files():
        tree = ast.parse(file.read_text(), str(file))
        trees = [(tree, 0)]
        for node in ast.walk(tree):  # and the examples in the docstrings, which the doctests run
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node, clean=False)
            source = "\n".join(e.source for e in parser.get_examples(doc or ""))
            if source.strip():
                trees.append((ast.parse(source), node.body[0].lineno))
        for tree_, offset in trees:
            for node in ast.walk(tree_):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                bare += [f"{file.relative_to(ROOT)}:{offset or node.lineno} {n}" for n in names  # type: ignore[attr-defined]
                         if n.split(".")[0] in LAYER_FOLDERS]
    assert not bare, bare


@pytest.mark.parametrize("folder", sorted(LAYER_FOLDERS))
def test_the_checkout_maps_each_folder_into_the_namespace(folder: str) -> None:
    """rlopt/<folder> is a link to the top-level folder, the layout the wheel has (pyproject's package-dir)."""
    link = ROOT / "rlopt" / folder
    assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve()


def test_library_code_never_switches_the_matplotlib_backend() -> None:
    """``matplotlib.use`` (or pyplot, which keeps global figures) in a library changes the user's session: the
    plots draw on ``matplotlib.figure.Figure`` directly."""
    offenders = []
    for file in _python_files():
        if file.relative_to(ROOT).parts[0] in ("tests", "benchmarks", "examples"):
            continue
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Attribute) and node.attr == "use" and getattr(node.value, "id", "") == "matplotlib":
                offenders.append(f"{file.relative_to(ROOT)}:{node.lineno} matplotlib.use")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                offenders += [f"{file.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n == "matplotlib.pyplot"]
    assert not offenders, offenders
