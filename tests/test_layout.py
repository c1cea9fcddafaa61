"""The package layout holds: every name the README shows works after a bare ``import cspnet`` in a
fresh interpreter, the subpackages import each other without cycles, a failing model family is
reported as itself, and the CLI's engine options are the engine's."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "cspnet"
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _fresh(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``code`` in a new interpreter that has imported nothing of cspnet yet."""
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tests'}", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=ROOT)


# --- the README after a bare import -----------------------------------------------------------


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_readme_python_blocks_run_in_a_fresh_interpreter_after_a_bare_import(index):
    """Each block runs as written, its stated results checked (tests/test_readme.py's checker), in an
    interpreter where ``import cspnet`` is the only cspnet import before it."""
    code = (
        "import sys, cspnet, torch\n"
        "torch.manual_seed(0)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('cspnet.'))\n"
        "from readme_check import run_and_check\n"
        f"block = {PYTHON_BLOCKS[index]!r}\n"
        "print('checked', run_and_check(block, 'README.md python block'))\n"
        "print('loaded', ' '.join(loaded))\n"
    )
    proc = _fresh(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checked = int(re.search(r"^checked (\d+)$", proc.stdout, re.M).group(1))
    assert checked >= 1, "every Python example states at least one result"
    loaded = re.search(r"^loaded (.*)$", proc.stdout, re.M).group(1).split()
    assert "cspnet.weights" not in loaded and "cspnet.darknet" not in loaded  # nothing but the bare import


def _readme_names() -> list[str]:
    """Every dotted ``cspnet.x.y`` the README writes, in prose or code (file names left out)."""
    names = set(re.findall(r"(?<![\w./-])cspnet(?:\.[A-Za-z_]\w*)+", README))
    return sorted(n for n in names if not re.search(r"\.(safetensors|cfg|weights|onnx|md|py|png)$", n))


def test_every_name_the_readme_shows_resolves_after_a_bare_import():
    names = _readme_names()
    assert {"cspnet.weights.from_timm", "cspnet.darknet.parse_cfg", "cspnet.detection.detect",
            "cspnet.convert.to_native"} <= set(names)
    code = (
        "import json, cspnet\n"
        f"names = {names!r}\n"
        "missing = []\n"
        "for name in names:\n"
        "    obj = cspnet\n"
        "    try:\n"
        "        for part in name.split('.')[1:]:\n"
        "            obj = getattr(obj, part)\n"
        "    except AttributeError as e:\n"
        "        missing.append(f'{name}: {e}')\n"
        "print(json.dumps(missing))\n"
    )
    proc = _fresh(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == []


def test_a_missing_attribute_of_the_package_is_an_attribute_error():
    import cspnet

    with pytest.raises(AttributeError, match="module 'cspnet' has no attribute 'nope'"):
        cspnet.nope  # noqa: B018
    assert {"convert", "darknet", "detection", "inference", "bench"} <= set(dir(cspnet))


# --- import graph -----------------------------------------------------------------------------


def _unit(module: str) -> str:
    """The subpackage (or top-level module) a module belongs to: cspnet.models.registry -> models."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> dict[str, set[str]]:
    """unit -> the units its modules import, lazy imports inside functions included."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = module if rel.name == "__init__" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                where = SRC.parent / target.replace(".", "/")
                is_module = where.with_suffix(".py").exists() or where.is_dir()
                if target.startswith("cspnet.") and is_module and _unit(target) != _unit(module):
                    graph[_unit(module)].add(_unit(target))
    return graph


def test_the_subpackages_import_each_other_without_cycles():
    graph = _imports()
    graph.pop("__init__", None)  # the package's lazy attribute access reaches every unit by design
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # the layers the issue named: inference works on any model, the models know nothing of inference
    assert "inference" not in graph["models"] and "models" not in graph["inference"]


def _readme_layers() -> dict[str, int]:
    """unit -> its row in the README's "Where things are" table (0 at the top)."""
    section = README.split("## Where things are", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| `cspnet.")]
    return {name: i for i, row in enumerate(rows) for name in re.findall(r"`cspnet\.(\w+)`", row.split("|")[1])}


def test_imports_point_down_the_readme_layout():
    """What the README says of the layout: every package is in its table, and imports go down it."""
    rank = _readme_layers()
    graph = _imports()
    units = {_unit(".".join(p.relative_to(SRC.parent).with_suffix("").parts)) for p in SRC.rglob("*.py")}
    aliases = {"__init__", "__main__", "weights"}  # the package itself, `python -m cspnet`, the timm import's old name
    assert units - aliases == set(rank), "the README table lists every package"
    upward = [f"{a} -> {b}" for a in rank for b in graph.get(a, ()) if b in rank and rank[b] < rank[a]]
    assert upward == []


def test_the_cycle_check_finds_a_cycle(monkeypatch):
    """The walk above can fail: a made-up graph with a cycle is reported."""
    fake = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    monkeypatch.setattr(sys.modules[__name__], "_imports", lambda: defaultdict(set, fake))
    with pytest.raises(pytest.fail.Exception, match="import cycle: a -> b -> c -> a"):
        test_the_subpackages_import_each_other_without_cycles()


# --- the registry -----------------------------------------------------------------------------


def test_a_failing_family_import_is_reported_and_retried():
    """A family module that fails to import leaves the registry empty, not partial: every call
    raises that error (never "unknown model"), and once the module imports, every model is there."""
    code = (
        "import sys, cspnet\n"
        "from cspnet.models import registry\n"
        "sys.modules['cspnet.models.peleenet'] = None  # importing it now raises ImportError\n"
        "for _ in range(2):\n"
        "    try:\n"
        "        cspnet.list_models()\n"
        "    except ImportError as e:\n"
        "        print('error', 'cspnet.models.peleenet' in str(e), len(registry._REGISTRY))\n"
        "    try:\n"
        "        cspnet.create_model('resnet_tiny')\n"
        "    except ImportError as e:\n"
        "        print('create', 'cspnet.models.peleenet' in str(e))\n"
        "del sys.modules['cspnet.models.peleenet']\n"
        "print('after', len(cspnet.list_models()), 'csppeleenet' in cspnet.list_models())\n"
    )
    proc = _fresh(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.split("\n")
    assert lines[:4] == ["error True 0", "create True", "error True 0", "create True"], proc.stdout
    import cspnet

    full = len(cspnet.list_models())
    assert lines[4] == f"after {full} True" and full > 40


# --- the CLI's options are the engine's -------------------------------------------------------


def test_every_engine_option_is_a_train_flag_with_the_engines_default():
    """Unset flags take the task's defaults (its recipe's ``engine_defaults``), else the engine's."""
    from cspnet.cli import build_parser
    from cspnet.commands.driver import RUN_OPTIONS, train_config
    from cspnet.commands.recipes import RECIPES
    from cspnet.engine import TrainConfig

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in train._actions}
    for field in dataclasses.fields(TrainConfig):
        if field.name in RUN_OPTIONS:
            continue
        assert field.name in actions, f"TrainConfig.{field.name} has no flag"
        action = actions[field.name]
        if field.default is not None and field.default is not False:
            assert action.default is None and f"default {field.default}" in action.help, field.name
    assert train_config(build_parser().parse_args(["train"])) == TrainConfig(workers=None, progress=True)
    detect = RECIPES["detect"].engine_defaults
    assert detect and "(detect " in actions["epochs"].help
    assert train_config(build_parser().parse_args(["train", "--task", "detect"])) == TrainConfig(
        **detect, workers=None, progress=True)
    assert train_config(build_parser().parse_args(["train", "--task", "detect", "--epochs", "3"])).epochs == 3
