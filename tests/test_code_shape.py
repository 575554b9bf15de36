"""The developers' guide: no library function over 80 lines (package, benchmarks, figures).

A function's length is counted from its ``def`` line to its end, less its docstring (the guide asks for docstrings
with shapes, units and errors; they are not the code this rule is about). ``KNOWN_LONG`` lists the functions still
over the limit; the test fails when a new function goes over the limit and when a listed one has been shortened
(so the list only shrinks).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dictionary_learning_aligned", "benchmarks", "figures")
MAX_LINES = 80
EXEMPT_FILES: set = set()
#: "file:function" still over the limit (to be split by the file's owner)
KNOWN_LONG = {
}


def long_functions(root: Path = ROOT, limit: int = MAX_LINES) -> dict:
    """``{"path:qualified name": lines}`` of every function or method over ``limit`` lines (decorators not
    counted) in the library's packages, the exempt files left out."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in EXEMPT_FILES:
                continue
            for node, name in _functions(ast.parse(path.read_text(encoding="utf-8"))):
                n = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
                if n > limit:
                    found[f"{rel}:{name}"] = n
    return found


def _docstring_lines(node) -> int:
    """Lines taken by the function's docstring (0 without one)."""
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.end_lineno - first.lineno + 1
    return 0


def _functions(tree: ast.AST, prefix: str = ""):
    """(node, qualified name) of every function in ``tree``, methods and nested functions included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, prefix + node.name
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def test_no_new_function_over_80_lines():
    found = long_functions()
    new = {k: v for k, v in found.items() if k not in KNOWN_LONG}
    assert not new, f"functions over {MAX_LINES} lines (split them into named steps): {new}"


def test_known_long_list_is_current():
    found = long_functions()
    fixed = sorted(k for k in KNOWN_LONG if k not in found)
    assert not fixed, f"now within {MAX_LINES} lines: remove {fixed} from KNOWN_LONG"


def test_checker_finds_a_long_function(tmp_path):
    pkg = tmp_path / "figures"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (pkg / "m.py").write_text(f"class A:\n    def short(self):\n        return 1\n\n    def long(self):\n{body}\n"
                              f"        return 0\n".replace("\n    x", "\n        x"))
    assert long_functions(tmp_path) == {"figures/m.py:A.long": MAX_LINES + 2}


if __name__ == "__main__":
    pytest.main([__file__])
