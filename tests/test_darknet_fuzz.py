"""Fuzzing the darknet readers: random mutations of the released cfg files, and of .weights files,
give a network (that runs with the shapes it was built for) or our one-line error, never anything
else. The suite runs a short pass; ``benchmarks/fuzz_darknet.py`` runs the same checks long."""

from __future__ import annotations

import re
from collections import Counter
from functools import cache

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SHARED
from cspnet.darknet import CfgError, WeightsError, build, load_weights, parse_text, randomize, save_weights
from cspnet.darknet.cfg import READ, TRAINING_ONLY

CFG_DIR = SHARED / "reference" / "darknet-cfg"
OUTCOMES: Counter = Counter()  # what the checks saw, for the long run's report

SECTIONS = ["[net]", "[convolutional]", "[conv]", "[route]", "[shortcut]", "[maxpool]", "[avgpool]", "[yolo]",
            "[upsample]", "[connected]", "[softmax]", "[sam]", "[scale_channels]", "[reorg]", "[reorg3d]",
            "[dropout]", "[cost]", "[lstm]", "[", "[]"]
KEYS = sorted(set().union(*READ.values(), *TRAINING_ONLY.values())) + ["bogus", ""]
VALUES = st.one_of(
    st.integers(-3, 3).map(str),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["", "0", "-1", "1e9", "nan", "inf", "abc", ",", "1,2", "-0", "0.5", "1,,2", "9" * 30,
                     "leaky", "mish", "tanh", "-1,-3,-5,-6"]),
    st.text(max_size=8),
)


@cache
def cfg_texts() -> dict[str, str]:
    if not CFG_DIR.exists():
        return {}
    return {f.relative_to(CFG_DIR).as_posix(): f.read_text(encoding="utf-8") for f in sorted(CFG_DIR.rglob("*.cfg"))}


def _option_lines(lines):
    return [i for i, line in enumerate(lines) if "=" in line and not line.lstrip().startswith("#")]


@st.composite
def mutated_cfg(draw):
    """(source cfg, mutation names, mutated text): 1-4 line-level edits of a released cfg."""
    texts = cfg_texts()
    name = draw(st.sampled_from(sorted(texts)))
    lines = texts[name].split("\n")
    ops = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["value", "number", "delete", "duplicate", "swap", "section", "insert",
                                   "garbage", "truncate"]))
        ops.append(op)
        options = _option_lines(lines) or [0]
        i = draw(st.integers(0, len(lines) - 1))
        if op == "value":
            k = options[draw(st.integers(0, len(options) - 1))]
            lines[k] = lines[k].split("=", 1)[0] + "=" + draw(VALUES)
        elif op == "number":
            k = options[draw(st.integers(0, len(options) - 1))]
            numbers = list(re.finditer(r"-?\d+", lines[k]))
            if numbers:
                m = numbers[draw(st.integers(0, len(numbers) - 1))]
                new = str(draw(st.integers(-64, 1100)))
                lines[k] = lines[k][: m.start()] + new + lines[k][m.end():]
        elif op == "delete" and len(lines) > 1:
            k = options[draw(st.integers(0, len(options) - 1))] if draw(st.booleans()) else i
            del lines[k]
        elif op == "duplicate":
            lines.insert(i, lines[draw(st.integers(0, len(lines) - 1))])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "section":
            headers = [k for k, line in enumerate(lines) if line.startswith("[")] or [0]
            lines[headers[draw(st.integers(0, len(headers) - 1))]] = draw(st.sampled_from(SECTIONS))
        elif op == "insert":
            lines.insert(i, f"{draw(st.sampled_from(KEYS))}={draw(VALUES)}")
        elif op == "garbage":
            pos = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + draw(st.text(max_size=6)) + lines[i][pos:]
        elif op == "truncate":
            lines = lines[: max(1, i)]
    return name, ops, "\n".join(lines)


def check_cfg(text: str) -> tuple[str, str]:
    """('network', '') or ('CfgError', its message); anything else (another exception, shapes other
    than the builder worked out) fails."""
    try:
        cfg = parse_text(text, "fuzz.cfg")
        with torch.device("meta"):
            net = build(cfg)
    except CfgError as e:
        msg = str(e)
        assert msg.startswith("fuzz.cfg") and "\n" not in msg, msg
        return "CfgError", msg
    x = torch.empty(1, *net.input_shape, device="meta")
    out = net.eval().run(x, range(len(net.layers)))
    assert [tuple(out[i].shape[1:]) for i in range(len(net.layers))] == [i.out_shape for i in net.info]
    return "network", ""


# ---- weights: small cfgs covering every layer type that owns weights

WEIGHT_CFGS = {
    "conv": "[net]\nwidth=8\nheight=8\nchannels=4\n[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\n"
            "pad=1\nactivation=leaky\n[convolutional]\nfilters=4\ngroups=2\nsize=1\nactivation=linear\n"
            "[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\npad=1\nactivation=leaky\nshare_index=0\n",
    "connected": "[net]\nwidth=3\nheight=3\nchannels=2\n[connected]\noutput=4\nbatch_normalize=1\n"
                 "activation=relu\n[connected]\noutput=3\nactivation=linear\n[softmax]\n",
}


@cache
def weights_case(name: str) -> tuple[bytes, int]:
    """(a valid .weights file for WEIGHT_CFGS[name], its length)."""
    import tempfile
    from pathlib import Path

    net = randomize(build(parse_text(WEIGHT_CFGS[name], f"{name}.cfg")), calibrate=False)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "w.weights"
        save_weights(net, path)
        data = path.read_bytes()
    return data, len(data)


@st.composite
def mutated_weights(draw):
    name = draw(st.sampled_from(sorted(WEIGHT_CFGS)))
    data = bytearray(weights_case(name)[0])
    op = draw(st.sampled_from(["truncate", "append", "header", "flip", "cut"]))
    if op == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif op == "append":
        data += draw(st.binary(min_size=1, max_size=64))
    elif op == "header":
        field = draw(st.integers(0, 4))
        value = draw(st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, 2, 1000, 1001])))
        data[4 * field: 4 * field + 4] = value.to_bytes(4, "little", signed=True)
    elif op == "flip":
        k = draw(st.integers(0, len(data) - 1))
        data[k] ^= draw(st.integers(1, 255))
    else:
        a = draw(st.integers(0, len(data) - 1))
        del data[a: a + draw(st.integers(1, 16))]
    return name, op, bytes(data)


def check_weights(name: str, data: bytes, path) -> tuple[str, str]:
    """('loaded', '') or ('WeightsError', its message) for ``data`` written to ``path``; a load must
    have read a file of exactly the right size."""
    path.write_bytes(data)
    net = build(parse_text(WEIGHT_CFGS[name], f"{name}.cfg"))
    try:
        load_weights(net, path)
    except WeightsError as e:
        msg = str(e)
        assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
        return "WeightsError", msg
    # the header the version says (20 bytes from 0.2 on), or the other width where only that fits (read_header)
    assert len(data) - 4 * sum(t.numel() for m in net.layers for t in m.darknet_tensors()) in (16, 20)
    return "loaded", ""


# ---- the short run in the suite

FUZZ = settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.mark.skipif(not CFG_DIR.exists(), reason=f"darknet cfgs not found: {CFG_DIR}")
@FUZZ
@given(mutated_cfg())
def test_mutated_cfgs_give_a_network_or_a_cfg_error(case):
    OUTCOMES[check_cfg(case[2])[0]] += 1


@FUZZ
@given(mutated_weights())
def test_mutated_weights_load_or_give_a_weights_error(tmp_path_factory, case):
    path = tmp_path_factory.getbasetemp() / "fuzz.weights"
    OUTCOMES[check_weights(case[0], case[2], path)[0]] += 1


@settings(max_examples=40, deadline=None, database=None)
@given(st.text(max_size=200))
def test_arbitrary_text_is_a_cfg_error_or_a_network(text):
    OUTCOMES[check_cfg(text)[0]] += 1
