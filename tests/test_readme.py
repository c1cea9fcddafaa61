"""The README's set-up commands are what CI runs, and its examples print what it says they print
(the checker is ``readme_check.py``; the Python blocks run in fresh interpreters in
``test_layout.py``)."""

import re
from pathlib import Path

import pytest

from cspnet.cli import main as cli
from readme_check import run_and_check

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
