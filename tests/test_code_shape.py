"""The package stays readable: modules of one job (no file of vae_lab/ over 400 lines) and functions a
reader takes in at once (no body over 60 lines, its docstring not counted)."""

import ast

from tests.conftest import REPO

LONGEST_FILE = 400
LONGEST_BODY = 60


def _sources():
    return sorted((REPO / "vae_lab").rglob("*.py"))


def test_no_module_is_over_400_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in _sources()
        if (n := len(p.read_text().splitlines())) > LONGEST_FILE
    }
    assert long == {}, f"modules over {LONGEST_FILE} lines: split them by job"


def _body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = function.body
    first = body[0]
    if len(body) > 1 and isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        first = body[1]  # the docstring is not counted
    return function.end_lineno - first.lineno + 1


def test_no_function_body_is_over_60_lines():
    long = {
        f"{path.relative_to(REPO)}:{node.name}": _body_lines(node)
        for path in _sources()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _body_lines(node) > LONGEST_BODY
    }
    assert long == {}, f"function bodies over {LONGEST_BODY} lines"
