"""The README's set-up commands are what CI runs, and its Python examples run as written."""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_install_and_test_command():
    setup = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = [c.strip() for c in re.findall(r"```bash\n(.*?)```", setup, flags=re.S)]
    assert len(commands) == 2, "the set-up is exactly two commands"
    test = commands[1].split(" && ")[-1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci, f".ci/run must run the README's test command: {test}"
    assert "pip install" in ci and '".[dev]"' in ci


@pytest.mark.parametrize("index", range(len(re.findall(r"```python\n", README))))
def test_readme_python_examples_run(index):
    block = re.findall(r"```python\n(.*?)```", README, flags=re.S)[index]
    torch.manual_seed(0)
    exec(compile(block, f"README.md python block {index}", "exec"), {})
