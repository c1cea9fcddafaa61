"""Benchmark plumbing: results handed back from child processes (a fresh process has a clean heap,
threads and caches), and the one line that says what machine a figure was measured on."""

from __future__ import annotations

from pathlib import Path

import torch

CHILD_MARK = "=====result"


def print_child_result(result) -> None:
    """What a benchmark's child process hands back: JSON on one line after a marker, so that
    library output printed before it (warnings, progress) cannot be mistaken for it."""
    import json

    print(CHILD_MARK + json.dumps(result), flush=True)


def run_child(cmd: list[str], env: dict | None = None):
    """Run a benchmark child (a fresh process: clean heap, threads and caches) and return what it
    passed to :func:`print_child_result`."""
    import json
    import subprocess

    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or CHILD_MARK not in proc.stdout:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"benchmark child {' '.join(cmd[1:3])} failed (exit {proc.returncode}): {last}")
    return json.loads(proc.stdout.split(CHILD_MARK, 1)[1].splitlines()[0])


def cpu_flags() -> str:
    """The first ``flags`` line of /proc/cpuinfo (AVX-512, VNNI, AMX, bf16 decide the kernels torch picks)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine_info() -> str:
    """One line naming the CPU, threads, library versions and the load when it was called, so a
    committed figure says what it was measured on and whether the machine was quiet."""
    import os
    import platform

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = [f"torch {torch.__version__}"]
    for module, label in (("onnxruntime", "onnxruntime"), ("openvino", "OpenVINO"), ("cv2", "OpenCV")):
        try:
            versions.append(f"{label} {__import__(module).__version__}")
        except ImportError:
            pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads; "
            f"{'; '.join(versions)}; load average {load}")
