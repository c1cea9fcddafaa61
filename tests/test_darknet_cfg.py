"""cspnet.darknet.parse_cfg: darknet's cfg syntax, and one clear line for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import shared_path
from cspnet.darknet import CfgError, parse_cfg, parse_text

TINY = """[net]
# comment
; another comment
width=32
height = 32
channels=3
momentum=0.9
momentum=0.5

[conv]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[max]
size=2
stride=2
"""


def test_syntax_aliases_whitespace_and_first_value_wins():
    cfg = parse_text(TINY, "tiny.cfg")
    assert [s.kind for s in cfg.layers] == ["convolutional", "maxpool"]
    assert [s.name for s in cfg.layers] == ["conv", "max"]
    assert cfg.net.int("height") == 32  # "height = 32": darknet strips all whitespace
    assert cfg.net.float("momentum") == 0.9  # darknet's option_find returns the first occurrence
    conv = cfg.layers[0]
    assert conv.index == 0 and conv.line == 10
    assert conv.options["filters"] == ("8", 12)


def test_crlf_and_inline_comments():
    cfg = parse_text(TINY.replace("\n", "\r\n").replace("filters=8", "filters=8 # eight"), "crlf.cfg")
    assert cfg.layers[0].int("filters") == 8


@pytest.mark.parametrize(
    "text, line, words",
    [
        (TINY + "[lstm]\n", 21, "unknown section [lstm]"),
        (TINY.replace("size=3", "sise=3"), 13, "unknown option 'sise' in [conv]"),
        (TINY.replace("pad=1", "pad"), 15, "expected key=value"),
        (TINY.replace("pad=1", "=1"), 15, "expected key=value"),
        (TINY.replace("[max]", "[max"), 18, "malformed section header"),
        ("width=3\n" + TINY, 1, "before the first [section]"),
        ("# x\n[maxpool]\nsize=2\n" + TINY, 2, "the first section must be [net], not [maxpool]"),
        (TINY + "[net]\n", 21, "a second [net] section"),
    ],
    ids=["section", "option", "no-equals", "no-key", "header", "orphan", "first", "second-net"],
)
def test_syntax_errors_name_file_and_line(text, line, words):
    with pytest.raises(CfgError) as e:
        parse_text(text, "bad.cfg")
    msg = str(e.value)
    assert msg.startswith(f"bad.cfg:{line}:"), msg
    assert words in msg
    assert "\n" not in msg


def test_empty_and_layerless_files_name_their_last_line():
    with pytest.raises(CfgError, match=r"^empty\.cfg:2: no sections up to the end of the file; "):
        parse_text("# nothing\n; still nothing\n", "empty.cfg")
    with pytest.raises(CfgError, match=r"^empty\.cfg:1: no sections"):
        parse_text("", "empty.cfg")
    with pytest.raises(CfgError, match=r"^net\.cfg:4: \[net\] \(line 2\) but no layers up to the end of the file$"):
        parse_text("# a net alone\n[net]\nwidth=8\n\n", "net.cfg")


def test_a_utf8_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "bom.cfg"
    path.write_bytes(b"\xef\xbb\xbf" + TINY.replace("\n", "\r\n").encode())  # as Windows Notepad saves it
    cfg = parse_cfg(path)
    assert cfg.net.int("width") == 32 and cfg.net.line == 1
    assert [s.kind for s in cfg.layers] == ["convolutional", "maxpool"]


@pytest.mark.parametrize("error, words", [(PermissionError(13, "Permission denied"), "Permission denied"),
                                          (OSError(5, "Input/output error"), "Input/output error"),
                                          (OSError("no errno"), "OSError")], ids=["permission", "io", "bare"])
def test_an_unreadable_cfg_is_a_cfg_error(tmp_path, monkeypatch, error, words):
    path = tmp_path / "locked.cfg"
    path.write_text(TINY)

    def refuse(self):
        raise error

    monkeypatch.setattr(Path, "read_bytes", refuse)  # chmod 000 does not stop root
    with pytest.raises(CfgError) as e:
        parse_cfg(path)
    assert str(e.value) == f"{path}: cannot read the cfg file: {words}"


def test_value_errors_name_the_option_line():
    cfg = parse_text(TINY.replace("filters=8", "filters=eight").replace("momentum=0.9", "momentum=nan"), "v.cfg")
    with pytest.raises(CfgError, match=r"^v\.cfg:12: layer 0 \[conv\]: filters='eight' is not a whole number$"):
        cfg.layers[0].int("filters")
    with pytest.raises(CfgError, match=r"^v\.cfg:7: \[net\]: momentum='nan' must be a finite number$"):
        cfg.net.float("momentum")


def test_missing_file_is_a_cfg_error(tmp_path):
    with pytest.raises(CfgError, match="no such cfg file"):
        parse_cfg(tmp_path / "absent.cfg")
    with pytest.raises(CfgError, match="is a directory"):
        parse_cfg(tmp_path)


def test_every_released_cfg_parses():
    root = shared_path("reference", "darknet-cfg")
    files = sorted(root.rglob("*.cfg"))
    assert len(files) == 64  # INDEX.md: 64 cfg files
    kinds = set()
    for f in files:
        cfg = parse_cfg(f)
        assert cfg.layers, f
        kinds |= {s.kind for s in cfg.layers}
    assert kinds == {"convolutional", "maxpool", "avgpool", "route", "shortcut", "softmax", "upsample", "yolo",
                     "dropout", "scale_channels", "cost"}


def test_enetb0_duplicate_decay_keeps_the_first():
    # enetb0.cfg sets decay twice (0.0005, then 0.00005); darknet reads the first (architectures.md 6)
    cfg = parse_cfg(shared_path("reference", "darknet-cfg", "enetb0.cfg"))
    assert cfg.net.float("decay") == 0.0005
