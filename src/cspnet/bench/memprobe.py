"""Peak memory of one inference or one training step, measured in a fresh child process.

On CPU the only honest figure is the process's peak resident set size: PyTorch's CPU allocator
keeps no statistics, and a long-lived process remembers earlier peaks and cached allocations. So
each measurement runs ``python -m cspnet.bench.memprobe`` once, resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``) after the model and input are built, and reads it after the step; on
CUDA ``torch.cuda.max_memory_allocated`` is read in the same way.

Output (stdout, one JSON line): ``peak_mb`` (whole process), ``base_mb`` (after the model and input
were built, before the step) and ``step_mb`` = peak - base, what the step itself needed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

MODES = ("infer", "train")


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` figure (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    """Reset the process's peak RSS (Linux >= 4.0), so the next peak is the step's own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_now_mb() -> float:
    try:
        return _status_mb("VmRSS")
    except OSError:
        return 0.0


def _rss_peak_mb() -> float:
    try:
        return _status_mb("VmHWM")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _build(spec: str, timm: bool, num_classes: int):
    if timm:
        import timm as timm_lib

        return timm_lib.create_model(spec, pretrained=False, num_classes=num_classes)
    from ..models.spec import load_model

    return load_model(spec, num_classes=num_classes)


def probe(spec: str, img_size: int, batch_size: int, mode: str, device: str = "cpu", timm: bool = False,
          num_classes: int = 1000) -> dict:
    """Run one step in *this* process and return its memory figures (call it in a fresh one)."""
    import torch

    torch.manual_seed(0)
    dev = torch.device(device)
    model = _build(spec, timm, num_classes).to(dev)
    from ..models.spec import input_channels

    x = torch.randn(batch_size, input_channels(model), img_size, img_size, device=dev)
    if mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        target = torch.randint(0, num_classes, (batch_size,), device=dev)
    else:
        model.eval()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev) / 2**20
    else:
        import gc

        gc.collect()
        _reset_peak()
        base = _rss_now_mb()
    if mode == "train":
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
    else:
        with torch.no_grad():
            model(x)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = _rss_peak_mb()
    return {"peak_mb": round(peak, 1), "base_mb": round(base, 1), "step_mb": round(max(0.0, peak - base), 1)}


def measure(spec: str, img_size: int, batch_size: int, mode: str, device: str = "cpu", timm: bool = False,
            timeout: float = 1800) -> dict:
    """:func:`probe` in a fresh Python process; raises ValueError with the child's last line on failure."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; choose one of {', '.join(MODES)}")
    cmd = [sys.executable, "-m", "cspnet.bench.memprobe", spec, str(img_size), str(batch_size), mode,
           "--device", device] + (["--timm"] if timm else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"memory probe of {spec} ({mode}) failed: {err}")
    return json.loads(lines[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cspnet.bench.memprobe")
    p.add_argument("model")
    p.add_argument("img_size", type=int)
    p.add_argument("batch_size", type=int)
    p.add_argument("mode", choices=MODES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--timm", action="store_true", help="MODEL is a timm model name")
    args = p.parse_args(argv)
    print(json.dumps(probe(args.model, args.img_size, args.batch_size, args.mode, args.device, args.timm)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
