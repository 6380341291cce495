"""The production code does not import the development tools.

`patrol.devtools` (the local broker, simulators, demo, chaos and soak) is for development; a
worker, the intake, the SMS sender and `patrol replay` must run without it. The CLI names the
development commands too, so it may import `patrol.devtools`, but only inside those commands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import patrol

PACKAGE = Path(patrol.__file__).parent
DEVTOOLS = "patrol.devtools"


def _imports(tree: ast.AST, *, top_level_only: bool) -> list[tuple[int, str]]:
    nodes = ast.iter_child_nodes(tree) if top_level_only else ast.walk(tree)
    found: list[tuple[int, str]] = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def _production_modules() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if "devtools" not in path.relative_to(PACKAGE).parts
    ]


def test_no_production_module_imports_the_devtools() -> None:
    offenders = []
    for path in _production_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        # The CLI loads a development command's module when that command runs.
        top_level_only = path == PACKAGE / "cli.py"
        for line, module in _imports(tree, top_level_only=top_level_only):
            if module == DEVTOOLS or module.startswith(DEVTOOLS + "."):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_the_scan_sees_the_replay_and_the_cli() -> None:
    """The check above looks at the modules that matter (it would pass on an empty list)."""
    names = {path.relative_to(PACKAGE).as_posix() for path in _production_modules()}
    assert {"audit/replay.py", "cli.py", "worker/app.py", "intake/consumer.py"} <= names
