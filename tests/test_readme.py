"""The README's set-up commands are what CI runs, and its examples run as written and print what it
says they print: a Python expression followed by a comment that is itself an expression
(``# torch.Size([1, 64, 32, 32])``, ``# == model(x)``, a list ending in ``...`` for "starts with")
is checked; a prose comment (``# strides 8, 16, 32``) is not."""

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest
import torch

from cspnet.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
INFO_BLOCKS = re.findall(r"```text\n\$ cspnet info (\S+)\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_install_and_test_command():
    setup = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = [c.strip() for c in re.findall(r"```bash\n(.*?)```", setup, flags=re.S)]
    assert len(commands) == 2, "the set-up is exactly two commands"
    test = commands[1].split(" && ")[-1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci, f".ci/run must run the README's test command: {test}"
    assert "pip install" in ci and '".[dev]"' in ci


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


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_readme_python_examples_run_and_print_what_they_claim(index):
    torch.manual_seed(0)
    checked = run_and_check(PYTHON_BLOCKS[index], f"README.md python block {index}")
    assert checked >= 1, "every Python example states at least one result"


def test_a_wrong_claim_in_a_readme_example_fails():
    with pytest.raises(AssertionError, match=r"torch.Size\(\[1, 64, 16, 16\]\)"):
        run_and_check("import torch\ntorch.zeros(1, 64, 32, 32).shape  # torch.Size([1, 64, 16, 16])\n", "t")
    with pytest.raises(AssertionError):
        run_and_check("import torch\nx = torch.ones(3)\n(x * 2).sum()  # == x.sum()\n", "t")
    with pytest.raises(AssertionError):
        run_and_check("[1, 2, 3]  # [1, 3, ...]\n", "t")
    assert run_and_check("[1, 2, 3]  # [1, 2, ...]\nlen('ab')  # the length, in prose\n", "t") == 1


@pytest.mark.parametrize("model,expected", INFO_BLOCKS, ids=[m for m, _ in INFO_BLOCKS])
def test_readme_cspnet_info_output_is_what_the_command_prints(model, expected, capsys):
    """A README line stands for the printed line in the same place; ``...`` inside a line stands for
    any text, and a line that is only ``...`` for the rest of the output."""
    assert cli(["info", model]) == 0
    printed = capsys.readouterr().out.splitlines()
    for i, line in enumerate(expected.rstrip("\n").splitlines()):
        if line.strip() == "...":
            break
        pattern = ".*".join(re.escape(part) for part in line.rstrip().split("..."))
        assert i < len(printed) and re.fullmatch(pattern, printed[i].rstrip()), (line, printed[i:i + 1])


def test_the_readme_examples_are_found():
    """The block patterns above still match the README (else the checks above would silently vanish)."""
    assert len(PYTHON_BLOCKS) >= 2 and [m for m, _ in INFO_BLOCKS] == ["cspresnext50"]
