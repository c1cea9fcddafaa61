"""retain_freed_memory: after it, memory freed by one forward is reused by the next without page
faults. The setting is process-wide, so each check runs in a fresh child process."""

import os
import sys

import pytest

from cspnet.bench.child import run_child
from cspnet.inference.heap import USER_SETTINGS, _glibc

CHILD = """
import resource, torch
import cspnet
from cspnet.inference.heap import retain_freed_memory
torch.set_num_threads(1)

def faults_per_round(rounds=8):
    def one():  # what a forward does to the heap: a few MiB allocated, touched, freed together
        blocks = [torch.empty(3 << 18).fill_(1.0) for _ in range(4)]
        del blocks
    for _ in range(3):  # the heap grows to fit in the first rounds
        one()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        one()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / rounds

before = faults_per_round()
if MODE == "optimize":
    model = cspnet.create_model("peleenet_tiny", num_classes=4)
    state = cspnet.optimize_for_inference(model, torch.randn(1, 3, 32, 32), compile=False, rounds=1,
                                         runtimes=False).report.heap  # the peer engines' threads fault pages too
else:
    state = retain_freed_memory()
from cspnet.bench.child import print_child_result  # imported last: its imports allocate too
print_child_result({"state": state, "again": retain_freed_memory(), "before": before, "after": faults_per_round()})
"""


def _child(mode: str, **env) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    return run_child([sys.executable, "-c", f"MODE = {mode!r}\n" + CHILD], env={**clean, **env})


needs_glibc = pytest.mark.skipif(_glibc() is None, reason="glibc's malloc only (Linux)")


@needs_glibc
@pytest.mark.parametrize("mode", ["direct", "optimize"])
def test_freed_memory_is_reused_without_page_faults(mode):
    r = _child(mode)
    assert r["state"] == "retained" and r["again"] == "retained"
    # glibc's defaults fault some or all of the 12 MiB back in, depending on what the process did
    # before (the next test pins them down); retained, the same pages serve every round
    assert r["after"] < 30 and r["after"] <= r["before"]


@needs_glibc
def test_the_users_own_malloc_settings_are_left_alone():
    # the user's choice here: every block over 128 KiB is a fresh mapping, unmapped on free
    r = _child("direct", MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    assert r["state"] == "user settings"
    assert r["before"] > 2500 and r["after"] > 2500  # 4 blocks x 768 pages, faulted in every round


def test_optimize_can_leave_the_heap_alone():
    import torch

    import cspnet

    model = cspnet.create_model("peleenet_tiny", num_classes=4)
    fast = cspnet.optimize_for_inference(model, torch.randn(1, 3, 32, 32), compile=False, rounds=1,
                                         retain_memory=False)
    assert fast.report.heap == "untouched" and "freed memory: untouched" in fast.report.summary()
