"""The stage order is a checked fact: imports point upstream only, no module imports itself back.

Reads every module's imports with `ast` (module level and inside functions alike) and fails on
- an import of a later stage (the order below, which docs/design.md states word for word),
- an import cycle between modules,
- a unetkit import inside a function without a `# lazy: <reason>` comment (the command-line modules
  in LAZY_EXEMPT excepted: their imports are lazy so that `unetkit --help` does not load torch),
- a top-level package or module that has no place in the order.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

# Stages, upstream first. A module may import its own stage and earlier ones. The foundation
# (stage 0) holds what every stage needs and imports nothing above it.
STAGES: tuple[tuple[str, ...], ...] = (
    ("unetkit", "errors", "config", "catalog", "runtime", "tracing"),
    ("data",),
    ("models",),
    ("losses",),
    ("metrics",),
    ("artifact", "signing"),  # signing: Ed25519 over an artifact, used by artifact.load_artifact
    ("inference",),
    ("evaluation",),
    ("tuning",),
    ("monitor",),
    ("training",),
    ("planning",),
    ("export",),
    ("registry",),
    ("serve",),
    ("active",),
    ("cli", "__main__", "demo"),
)
LAZY_EXEMPT = {  # command-line modules: `unetkit --help` and completion must not import torch
    "unetkit.cli": "start-up time",
    "unetkit.registry.commands": "start-up time: the `unetkit registry` sub-app, mounted by cli.py",
}
LAZY_MARK = re.compile(r"#\s*lazy:\s*\S")


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # the unetkit module imported (the longest existing module prefix)
    line: int
    in_function: bool
    commented: bool  # `# lazy: ...` on the line or the line above


def module_files(src: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def read_imports(src: Path, package: str = "unetkit") -> list[Import]:
    files = module_files(src)
    return [i for name, path in files.items() for i in module_imports(name, path, files, package)]


def module_imports(name: str, path: Path, files: dict[str, Path], package: str) -> list[Import]:
    text = path.read_text()
    lines = text.splitlines()
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[Import] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if node.level:
            stem = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        return [f"{stem}.{a.name}" if f"{stem}.{a.name}" in files else stem for a in node.names]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                around = lines[max(child.lineno - 2, 0): child.end_lineno or child.lineno]
                commented = any(LAZY_MARK.search(s) for s in around)
                for target in targets(child):
                    if target != package and not target.startswith(package + "."):
                        continue
                    while target not in files and "." in target:
                        target = target.rsplit(".", 1)[0]
                    found.append(Import(name, target, child.lineno, in_function, commented))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(text, filename=str(path)), False)
    return found


def stage_of(module: str) -> int:
    parts = module.split(".")
    unit = parts[1] if len(parts) > 1 else parts[0]
    for rank, names in enumerate(STAGES):
        if unit in names:
            return rank
    raise KeyError(f"{module}: its stage is not in STAGES (tests/test_layering.py) nor docs/design.md")


def upward_imports(imports: list[Import]) -> list[str]:
    return [f"{i.importer}:{i.line} imports {i.target} (stage {stage_of(i.target)} > {stage_of(i.importer)})"
            for i in imports if stage_of(i.target) > stage_of(i.importer)]


def cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        # a package's __init__ is its own module; a submodule importing its parent package is an
        # edge like any other
        if i.target != i.importer:
            graph.setdefault(i.importer, set()).add(i.target)
            graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def unexplained_lazy(imports: list[Import]) -> list[str]:
    return [f"{i.importer}:{i.line} imports {i.target} inside a function without a `# lazy: <reason>` comment"
            for i in imports if i.in_function and not i.commented and i.importer not in LAZY_EXEMPT]


IMPORTS = read_imports(SRC)


def test_every_module_has_a_stage() -> None:
    for name in module_files(SRC):
        stage_of(name)


def test_imports_point_upstream_only() -> None:
    assert upward_imports(IMPORTS) == []


def test_no_import_cycles() -> None:
    assert cycles(IMPORTS) == []


def test_function_level_imports_say_why() -> None:
    assert unexplained_lazy(IMPORTS) == []


def test_design_doc_states_the_same_order() -> None:
    """docs/design.md opens with the stage order (foundation and command line aside); it must be this one."""
    first = next(line for line in (ROOT / "docs" / "design.md").read_text().splitlines() if "→" in line)
    stated = [s.strip() for s in first.split("→")]
    assert stated == [names[0] for names in STAGES[1:-1]], first


# ---- the checker itself catches what it is for (a tree written by the test)

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "unetkit" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_checker_finds_an_upward_import(tmp_path: Path) -> None:
    src = _tree(tmp_path, {"__init__.py": "", "data/__init__.py": "", "serve/__init__.py": "",
                           "data/io.py": "from unetkit.serve.app import create_app\n", "serve/app.py": ""})
    found = upward_imports(read_imports(src))
    assert len(found) == 1 and found[0].startswith("unetkit.data.io:1 imports unetkit.serve.app")


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    src = _tree(tmp_path, {"__init__.py": "", "training/__init__.py": "",
                           "training/fit.py": "from unetkit.training import worker\n",
                           "training/worker.py": "def main():\n    from .fit import fit  # lazy: dodges\n"})
    imports = read_imports(src)
    assert cycles(imports) == [["unetkit.training.fit", "unetkit.training.worker"]]
    assert unexplained_lazy(imports) == []


def test_checker_wants_a_reason_for_a_function_level_import(tmp_path: Path) -> None:
    src = _tree(tmp_path, {"__init__.py": "", "models/__init__.py": "", "data/__init__.py": "",
                           "models/unet.py": "def f():\n    from unetkit.data import io\n", "data/io.py": ""})
    assert unexplained_lazy(read_imports(src)) == [
        "unetkit.models.unet:2 imports unetkit.data.io inside a function without a `# lazy: <reason>` comment"]


def test_checker_knows_every_stage(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="plugins"):
        stage_of("unetkit.plugins.x")


def test_the_lazy_imports_do_their_job() -> None:
    """What the `# lazy:` comments in cli.py and serve/server.py promise: the command line starts
    without torch (start-up time), and the server sets its OpenMP policy before torch loads."""
    import subprocess
    import sys

    code = "import sys, unetkit.cli, unetkit.serve.server; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
