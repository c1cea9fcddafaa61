"""Running a README Python block and checking what it claims: a Python expression followed by a
comment that is itself an expression (``# torch.Size([1, 64, 32, 32])``, ``# == model(x)``, a list
ending in ``...`` for "starts with") is checked; a prose comment (``# strides 8, 16, 32``) is not.

Imported by the tests, and by the fresh interpreters that run each block after a bare
``import cspnet`` (``test_layout.py``), so it imports nothing of cspnet itself."""

from __future__ import annotations

import ast
import io
import tokenize

import torch


def _claim(comment: str):
    """The expression a trailing comment claims (``(is_equality, source)``), or None for prose."""
    text = comment.lstrip("#").strip()
    if text.startswith("=="):
        return True, text[2:].strip()
    try:
        ast.parse(text, mode="eval")
    except SyntaxError:
        return None
    return False, text


def _check(value, expected, what):
    if isinstance(expected, list) and expected and expected[-1] is Ellipsis:  # "[first, ...]": a prefix
        value, expected = list(value)[: len(expected) - 1], expected[:-1]
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(value, expected, msg=what)
    else:
        assert value == expected, f"{what}: got {value!r}"


def run_and_check(block: str, name: str) -> int:
    """Run a README Python block statement by statement, checking every claim; returns their count."""
    comments = {
        tok.start[0]: tok.string
        for tok in tokenize.generate_tokens(io.StringIO(block).readline)
        if tok.type == tokenize.COMMENT
    }
    namespace, checked = {}, 0
    for stmt in ast.parse(block).body:
        claim = comments.get(stmt.end_lineno) if isinstance(stmt, ast.Expr) else None
        claim = _claim(claim) if claim else None
        if claim is None:
            exec(compile(ast.Module([stmt], []), name, "exec"), namespace)
            continue
        source = ast.get_source_segment(block, stmt)
        value = eval(compile(ast.Expression(stmt.value), name, "eval"), namespace)
        expected = eval(claim[1], namespace)
        _check(value, expected, f"{name}, line {stmt.lineno}: {source}  # {'== ' if claim[0] else ''}{claim[1]}")
        checked += 1
    return checked
