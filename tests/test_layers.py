"""The package's shape holds: import-linter's layer and acyclic contracts pass (and fail on one forbidden
import), the top of ``lightning_rank/`` stays small (13 modules and folders), no source file outgrows 400
lines, and the reranker's LightningModule depends on few project modules."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "lightning_rank"
MAX_TOP_LEVEL_ENTRIES = 13
MAX_LINES = 400
MAX_MODULE_IMPORTS = 6


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` (import-linter, the dev extra) on the package importable from ``cwd``."""
    beside = Path(sys.executable).parent / "lint-imports"
    command = str(beside) if beside.is_file() else shutil.which("lint-imports")
    assert command, "lint-imports is not installed: pip install -e '.[dev]'"
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [command, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_import_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken", result.stdout), result.stdout


def test_one_import_from_a_lower_layer_up_breaks_the_contract(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "lightning_rank", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "lightning_rank" / "errors.py"
    errors.write_text(errors.read_text() + "\nimport lightning_rank.cli  # forbidden\n")
    line = len(errors.read_text().splitlines())
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "Layers:" in result.stdout and "BROKEN" in result.stdout, result.stdout
    assert f"lightning_rank.errors -> lightning_rank.cli (l.{line})" in result.stdout, result.stdout


def test_the_package_top_holds_at_most_13_rooms():
    """Rooms are the modules and folders a newcomer walks through; ``__init__.py`` is the door, not one."""
    rooms = sorted(p.name for p in PACKAGE.iterdir() if p.name not in ("__pycache__", "__init__.py"))
    assert len(rooms) <= MAX_TOP_LEVEL_ENTRIES, rooms


def test_no_source_file_is_over_400_lines():
    lengths = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {path: n for path, n in lengths.items() if n > MAX_LINES} == {}


def project_imports(path: Path) -> set[str]:
    """The ``lightning_rank`` modules a file imports anywhere (top level, functions, TYPE_CHECKING blocks):
    ``from pkg import name`` counts ``pkg.name`` where that is a module, else ``pkg``."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "lightning_rank")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            if base.split(".")[0] != "lightning_rank":
                continue
            for alias in node.names:
                target = REPO.joinpath(*f"{base}.{alias.name}".split("."))
                is_module = target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()
                found.add(f"{base}.{alias.name}" if is_module else base)
    return found


def test_the_lightning_module_imports_at_most_6_project_modules():
    imports = project_imports(PACKAGE / "reranker" / "module.py")
    assert len(imports) <= MAX_MODULE_IMPORTS, f"{len(imports)}: {', '.join(sorted(imports))}"


def test_contributing_maps_every_module_of_the_package():
    """CONTRIBUTING.md's layout names each folder and module, so a newcomer's map is never out of date."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    block = text[text.index("## Layout") : text.index("## Adding a backbone")]
    modules = {p.stem for p in PACKAGE.rglob("*.py") if p.stem not in ("__init__", "__main__")}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    unnamed = sorted(m for m in modules | folders if not re.search(rf"\b{m}\b", block))
    assert unnamed == [], f"CONTRIBUTING.md's layout does not name {unnamed}"
