"""The house rules of the package layout, checked by reading the source with ``ast`` (nothing is imported).

* no module-level import cycle between segmorph modules (imports inside functions run later and do not count;
  neither do ``if TYPE_CHECKING:`` blocks, which never run);
* only ``segmorph/cli/`` (and ``segmorph/__main__.py``, which runs it) imports ``segmorph.cli`` or argparse,
  at any level: library code is usable without the command line;
* no ``_private`` name is imported from another segmorph module (make it public or move it);
* the capability sub-packages exist, and the top level holds only the core modules.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "segmorph"

CORE_MODULES = {"__init__", "__main__", "geometry", "image", "io", "errors", "configs", "progress", "provenance",
                "plots", "threads", "records", "outputs", "readchecks", "folds", "lazy"}  # fmt: skip
LAYOUT = {
    "nn": ["blocks", "unet", "fcn", "classifiers", "transfer", "names"],
    "transforms": [],
    "engine": ["loop", "schedules", "checkpoints", "distributed", "autocast", "sliding_window", "tracking"],
    "metrics": ["segmentation", "classification", "registration"],
    "segmentation": ["datasets", "preprocess", "plan", "task", "losses", "pipeline", "predict", "postprocess",
                     "evaluate", "baselines", "baseline_files", "export", "demo", "mesh", "crossval", "crossval_layout",
                     "ensemble", "postprocess_choice", "find_best", "unlabelled", "semisupervised", "few_labels", "sparse_labels",
                     "names"],
    "registration": ["transform", "spatial", "similarity", "regularize", "classical", "pairs", "structure", "atlas",
                     "run", "pictures", "names"],
    "registration/learned": ["config", "network", "model", "prior", "training"],
    "classification": ["data", "split", "request", "init_source", "task", "pipeline", "predict", "plots", "crossval",
                       "crossval_layout", "ensemble"],
    "pretraining": ["objectives", "task", "networks", "pictures", "pipeline", "api"],
    "synthesis": ["networks", "deform", "task", "model", "pipeline", "sampling", "pictures", "api"],
    "interpret": ["gradcam", "explain"],
    "dicom": ["anonymize", "seg", "series", "rtstruct", "dicomweb", "pacs"],
    "report": [],
    "qc": ["quality"],
    "processing": ["filters", "steps", "files"],
    "cli": ["main", "arguments", "segmentation", "registration", "classification", "dicom", "report", "interpret",
            "info", "quality", "processing", "view", "pacs", "mesh", "pretraining", "synthesis"],
}  # fmt: skip


@dataclass(frozen=True)
class Import:
    """One imported segmorph module (or argparse) as the source names it."""

    source: str  # importing module, dotted
    target: str  # imported module, dotted (the module itself when ``from pkg import module``)
    name: str | None  # the name taken from ``target`` by ``from target import name`` (None: a module)
    where: str  # "path:line"
    module_level: bool  # runs when the importing module is imported


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under the package folder ``root``."""
    files = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The module a (possibly relative) ``from ... import`` names."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportCollector(ast.NodeVisitor):
    """Every import of a module, noting whether it runs at import time (outside functions and TYPE_CHECKING)."""

    def __init__(self, module: str, path: Path, files: dict[str, Path], label: str) -> None:
        self.module, self.path, self.files, self.label = module, path, files, label
        self.depth = 0  # functions (and TYPE_CHECKING blocks) around the current node
        self.imports: list[Import] = []

    def _deferred(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _deferred

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node):
            self.depth += 1
            for child in node.body:
                self.visit(child)
            self.depth -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _add(self, target: str, name: str | None, node: ast.stmt) -> None:
        where = f"{self.label}:{node.lineno}"
        if target == "argparse" or target.startswith("argparse."):
            self.imports.append(Import(self.module, "argparse", name, where, self.depth == 0))
            return
        if name is not None and f"{target}.{name}" in self.files:  # from segmorph.pkg import module
            target, name = f"{target}.{name}", None
        while target and target not in self.files:  # import segmorph.x.y names the module segmorph.x.y
            target = target.rpartition(".")[0]
        if target:
            self.imports.append(Import(self.module, target, name, where, self.depth == 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, None, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        target = _absolute(self.module, self.path.name == "__init__.py", node)
        for alias in node.names:
            self._add(target, alias.name, node)


def collect_imports(root: Path) -> list[Import]:
    """Every import of a module of the package ``root`` (or of argparse) in every file of the package."""
    files = module_files(root)
    imports = []
    for module, path in files.items():
        label = str(path.relative_to(root.parent))
        collector = _ImportCollector(module, path, files, label)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        imports += collector.imports
    return imports


def import_cycles(imports: list[Import]) -> list[list[Import]]:
    """Module-level import cycles, each as the imports that close it (one cycle per set of modules)."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        if imp.module_level and imp.target != imp.source and imp.target != "argparse":
            edges.setdefault(imp.source, {}).setdefault(imp.target, imp)
    cycles, seen, done = [], set(), set()

    def visit(module: str, path: list[Import], on_path: list[str]) -> None:
        for target, imp in sorted(edges.get(module, {}).items()):
            if target in on_path:
                cycle = path[on_path.index(target) :] + [imp]
                key = frozenset(i.source for i in cycle)
                if key not in seen:
                    seen.add(key)
                    first = min(range(len(cycle)), key=lambda i: cycle[i].source)  # start at the first name
                    cycles.append(cycle[first:] + cycle[:first])
            elif target not in done:
                visit(target, path + [imp], on_path + [target])
        done.add(module)

    for module in sorted(edges):
        if module not in done:
            visit(module, [], [module])
    return cycles


def architecture_problems(root: Path) -> list[str]:
    """One line per broken rule, naming the file and line."""
    package = root.name
    imports = collect_imports(root)
    problems = []
    for cycle in import_cycles(imports):
        chain = " -> ".join(f"{imp.source} ({imp.where})" for imp in cycle)
        problems.append(f"module-level import cycle: {chain} -> {cycle[0].source}")
    for imp in imports:
        in_cli = imp.source == f"{package}.cli" or imp.source.startswith(f"{package}.cli.")
        entry_point = imp.source == f"{package}.__main__"
        cli_target = imp.target == f"{package}.cli" or imp.target.startswith(f"{package}.cli.")
        if (cli_target or imp.target == "argparse") and not (in_cli or entry_point):
            what = "argparse" if imp.target == "argparse" else "the CLI"
            problems.append(f"library module imports {what}: {imp.where} ({imp.target})")
        private = imp.name is not None and imp.name.startswith("_") and not imp.name.startswith("__")
        if private and imp.target != imp.source and imp.target != "argparse":
            problems.append(f"private name imported from another module: {imp.where} ({imp.target}.{imp.name})")
    return problems


def test_segmorph_keeps_the_import_rules():
    problems = architecture_problems(PACKAGE)
    assert not problems, "\n".join(problems)


def test_the_package_is_laid_out_by_capability():
    missing = [f"{folder}/{name}.py" for folder, names in LAYOUT.items() for name in ["__init__", *names]
               if not (PACKAGE / folder / f"{name}.py").is_file()]  # fmt: skip
    assert not missing, f"missing from src/segmorph: {missing}"
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.stem not in CORE_MODULES)
    assert not flat, f"top-level modules beyond the core (a capability is a sub-package): {flat}"
    without_init = sorted(str(d.relative_to(PACKAGE)) for d in PACKAGE.rglob("*")
                          if d.is_dir() and any(d.glob("*.py")) and not (d / "__init__.py").is_file())  # fmt: skip
    assert not without_init, f"folders of modules that are not packages: {without_init}"


FAKE = {
    "__init__.py": '"""A fake package."""\n',
    "a.py": "from fake.b import thing\n\n\ndef later():\n    from fake.c import other  # function-level: no cycle\n",
    "b.py": "import fake.a\n\nthing = 1\n",
    "c.py": "from fake import a, d\n\nother = 2\n",  # c -> a -> b -> a: one cycle, reported once
    "d.py": "from . import c\n",  # c -> d -> c, both as `from package import module`
    "library.py": "def run():\n    from fake.cli.main import main\n    import argparse\n",
    "secret.py": "from .b import _hidden\n",
    "typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fake.late import Late\n",
    "late.py": "import fake.typed\n",  # no cycle: typed imports late only for type checkers
    "__main__.py": "from fake.cli.main import main\n",
    "cli/__init__.py": "",
    "cli/main.py": "import argparse\n\nfrom fake.b import thing\n\n\ndef main():\n    return argparse\n",
}


def test_the_checker_finds_a_cycle_a_cli_import_and_a_private_import(tmp_path):
    root = tmp_path / "fake"
    for name, text in FAKE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    problems = architecture_problems(root)
    assert problems == [
        "module-level import cycle: fake.a (fake/a.py:1) -> fake.b (fake/b.py:1) -> fake.a",
        "module-level import cycle: fake.c (fake/c.py:1) -> fake.d (fake/d.py:1) -> fake.c",
        "library module imports the CLI: fake/library.py:2 (fake.cli.main)",
        "library module imports argparse: fake/library.py:3 (argparse)",
        "private name imported from another module: fake/secret.py:1 (fake.b._hidden)",
    ], "\n".join(problems)
