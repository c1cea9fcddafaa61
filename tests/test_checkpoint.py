"""Checkpoints: self-describing .safetensors, weights-only .pt, and one-line errors."""

import os
import pickle

import pytest
import torch

import cspnet
from cspnet.checkpoint import CheckpointError, atomic_write_bytes, save_checkpoint

NAME = "cspdarknet_tiny"


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = cspnet.create_model(NAME, num_classes=4, in_chans=1, gamma=0.25).eval()
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path, extra={"classes": ["a", "b", "c", "d"]})
    return model, path


def test_checkpoint_rebuilds_the_model_without_a_name(saved):
    model, path = saved
    loaded = cspnet.create_model(checkpoint=str(path)).eval()
    assert loaded.model_name == NAME and loaded.num_classes == 4 and loaded.cfg.stages[0].gamma == 0.25
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_num_classes_different_from_the_checkpoint_replaces_the_head(saved):
    _, path = saved
    m = cspnet.create_model(checkpoint=str(path), num_classes=9).eval()
    assert m(torch.randn(1, 1, 32, 32)).shape == (1, 9)


def test_pt_files_load_with_weights_only(saved, tmp_path):
    model, _ = saved
    pt = tmp_path / "w.pt"
    torch.save({"state_dict": model.state_dict()}, pt)
    loaded = cspnet.create_model(NAME, num_classes=4, in_chans=1, gamma=0.25, checkpoint=str(pt)).eval()
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))


def one_line(exc_info):
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError) as e:
        cspnet.create_model(NAME, checkpoint=str(tmp_path / "nope.safetensors"))
    assert one_line(e).endswith("nope.safetensors: no such file")


def test_truncated_safetensors(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as e:
        cspnet.create_model(checkpoint=str(bad))
    assert "truncated.safetensors: not a readable .safetensors file" in one_line(e)


class Evil:
    """Unpickling this creates ``marker``: the proof that a payload ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_malicious_pt_is_not_unpickled(tmp_path, writer):
    marker = tmp_path / "payload-ran"
    bad = tmp_path / "evil.pt"
    if writer == "pickle":
        bad.write_bytes(pickle.dumps({"state_dict": Evil(marker)}))
    else:
        torch.save({"state_dict": Evil(marker)}, bad)
    with pytest.raises(CheckpointError) as e:
        cspnet.create_model(NAME, checkpoint=str(bad))
    text = one_line(e)
    assert text.startswith(f"{bad}: not a readable weights-only torch file (refused to unpickle: ")
    assert not marker.exists(), "the pickled payload ran"
    # torch's own message advises weights_only=False or allowlisting the global: never pass that on
    assert "weights_only" not in text and "add_safe_globals" not in text and "trusted source" not in text
    if writer == "torch.save":
        assert text.endswith("Unsupported global: GLOBAL io.open was not an allowed global by default)")
    # the control: an ordinary unpickling runs the payload
    loaded = pickle.loads(bad.read_bytes()) if writer == "pickle" else torch.load(bad, weights_only=False)
    loaded["state_dict"].close()  # the file object the payload opened
    assert marker.exists()


def test_a_pt_file_that_is_not_a_torch_file(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01not a zip at all")
    with pytest.raises(CheckpointError) as e:
        cspnet.create_model(NAME, checkpoint=str(garbage))
    assert one_line(e).startswith(f"{garbage}: not a readable weights-only torch file (")


def test_mismatched_keys_and_shapes_name_the_first_offender(saved, tmp_path):
    model, _ = saved
    state = model.state_dict()
    pt = tmp_path / "keys.pt"
    torch.save({k: v for k, v in state.items() if k != "stages.1.split_blocks.bn.bias"}, pt)
    with pytest.raises(CheckpointError) as e:
        cspnet.create_model(NAME, num_classes=4, in_chans=1, gamma=0.25, checkpoint=str(pt))
    assert one_line(e) == f"{pt}: missing key 'stages.1.split_blocks.bn.bias' (the file does not fit this model)"
    saved_path = tmp_path / "model.safetensors"
    with pytest.raises(CheckpointError) as e:
        cspnet.create_model(NAME, num_classes=4, gamma=0.25, in_chans=3, checkpoint=str(saved_path))
    assert one_line(e) == (
        f"{saved_path}: key 'stem.conv.weight' has shape (8, 1, 3, 3), the model needs (8, 3, 3, 3)"
    )


def test_checkpoint_of_another_model_is_refused(saved):
    _, path = saved
    with pytest.raises(ValueError, match="holds weights of model 'cspdarknet_tiny', not 'darknet_tiny'"):
        cspnet.create_model("darknet_tiny", checkpoint=str(path))


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temporary left behind


def test_named_checkpoint_uses_the_stored_config(tmp_path):
    """A baseline saved with fusion='none' loads under its registered name: the file's config wins."""
    baseline = cspnet.create_model(NAME, num_classes=3, fusion="none").eval()
    path = tmp_path / "baseline.safetensors"
    save_checkpoint(baseline, path)
    loaded = cspnet.create_model(NAME, checkpoint=str(path)).eval()
    assert all(stage.fusion == "none" for stage in loaded.stages)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), baseline(x))


def test_a_fresh_process_loads_a_checkpoint_without_a_name(saved):
    import subprocess
    import sys

    _, path = saved
    code = f"import cspnet; m = cspnet.create_model(checkpoint={str(path)!r}); print(m.model_name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == NAME


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    target = tmp_path / "metrics.json"
    old = os.umask(0o022)
    try:
        atomic_write_bytes(target, b"{}")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
