"""The house rule of docs/design.md's module map: commands sit over a library and never import
each other (bench.py and gpucheck.py, the harness that measures them, may). A change to one command then cannot
break another, and loading a model does not import the training loop."""

import ast
import os

from conftest import ROOT

COMMANDS = ("prepare", "train", "sample", "eval", "export", "plan", "scaling")
HARNESS = ("bench", "gpucheck")


def imported_modules(path):
    """Every top-level module name a file imports, at any depth of its code (lazy imports too)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args
              and isinstance(node.args[0], ast.Constant)):
            names.add(str(node.args[0].value).split(".")[0])
    return names


def test_no_command_imports_another_command():
    present = [c for c in COMMANDS if os.path.exists(os.path.join(ROOT, c + ".py"))]
    assert {"prepare", "train", "sample", "eval", "export", "plan"} <= set(present)
    for name in present:
        others = imported_modules(os.path.join(ROOT, name + ".py")) & (set(present) | set(HARNESS)) - {name}
        assert not others, f"{name}.py imports the command(s) {sorted(others)}: move what it needs into a library module"


def test_the_library_imports_no_command():
    commands = set(COMMANDS) | set(HARNESS)
    for f in sorted(os.listdir(ROOT)):
        name = f[:-3]
        if f.endswith(".py") and name not in commands:
            found = imported_modules(os.path.join(ROOT, f)) & commands
            assert not found, f"library module {f} imports the command(s) {sorted(found)}"
