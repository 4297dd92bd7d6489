"""Training on CPU reuses the memory a step frees instead of faulting it back in from the kernel
(vissl_lite/host_memory.py; issue 28: 570,000 minor page faults per step cost our loop 10-25%).

The page-fault probes run in a fresh process: how malloc serves a block depends on everything
the process allocated and freed before (a test worker's earlier tests), not on this setting alone.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import _toy
from vissl_lite import host_memory
from vissl_lite.engine import trainer
from vissl_lite.host_memory import reused_host_memory

TESTS = Path(__file__).resolve().parent
PROBE = r'''
import ctypes, json, resource, sys
from vissl_lite.host_memory import reused_host_memory

BLOCK, AFTER_BLOCK = 96 << 20, 320 << 20   # above glibc's largest mmap threshold (32 MB)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]

def faults_to_refill(nbytes, warmup=4):
    """Minor page faults of writing a new block of ``nbytes`` after ``warmup`` blocks of that size
    were written and freed: a step's activations, allocated again the step after. Plain malloc:
    torch's aligned allocation of one size alone can keep landing above a freed block (its
    leading fragment stays in use), which a training step's mix of sizes does not show."""
    def write_and_free():
        block = libc.malloc(nbytes)
        ctypes.memset(block, 1, nbytes)
        libc.free(block)
    for _ in range(warmup):
        write_and_free()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    write_and_free()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

out = {"pages": BLOCK // 4096, "after_pages": AFTER_BLOCK // 4096}
with reused_host_memory(True) as active:
    out["active"] = active
    out["inside"] = faults_to_refill(BLOCK)
# a size no freed chunk can serve (those stay in malloc's bins): mmap'd, i.e. defaults back
out["after"] = faults_to_refill(AFTER_BLOCK, warmup=2)
if len(sys.argv) > 1:          # the same probe as an evaluator of `vissl-lite eval` on CPU
    from vissl_lite.eval.cli import main
    from vissl_lite.eval.evaluator import EvalResult, Evaluator
    from vissl_lite.registry import EVALUATORS

    @EVALUATORS.register("refill_probe", help="page faults of refilling a freed block")
    class RefillProbe(Evaluator):
        def run(self, ctx):
            out["eval"] = faults_to_refill(BLOCK)
            return EvalResult({"faults": out["eval"]})

    assert main(["refill_probe", "random:resnet18", "--data", sys.argv[1], "--device", "cpu"]) == 0
print("PROBE " + json.dumps(out))
'''
glibc_only = pytest.mark.skipif(not host_memory.supported(), reason="mallopt is glibc's")


def huge_pages_always() -> bool:
    """Transparent huge pages for every mapping: 2 MB faults, so the default's cost is not seen
    as a count of 4 kB pages."""
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.is_file() and "[always]" in path.read_text()


@pytest.fixture(scope="module")
def probe(cifar_archive):
    done = subprocess.run([sys.executable, "-c", PROBE, str(cifar_archive)], cwd=TESTS.parent,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line = [l for l in done.stdout.splitlines() if l.startswith("PROBE ")][-1]
    return json.loads(line[len("PROBE "):])


@glibc_only
def test_a_freed_block_is_reused_inside_and_faulted_in_afresh_after(probe):
    assert probe["active"]
    assert probe["inside"] < 0.02 * probe["pages"], probe
    if not huge_pages_always():
        assert probe["after"] > 0.5 * probe["after_pages"], "glibc's defaults are back after it"


@glibc_only
def test_an_evaluation_on_cpu_reuses_host_memory(probe):
    """``vissl-lite eval`` runs its evaluator with freed memory kept (kNN: 1.25x on 2 cores)."""
    assert probe["eval"] < 0.02 * probe["pages"], probe


def test_disabled_or_unsupported_changes_nothing(monkeypatch):
    with reused_host_memory(False) as active:
        assert active is False
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)   # macOS, musl
    with reused_host_memory(True) as active:
        assert active is False


@pytest.mark.parametrize("setting, expected", [("auto", True), ("false", False)])
def test_the_trainer_reuses_host_memory_on_cpu_unless_told_not_to(tmp_path, monkeypatch,
                                                                  setting, expected):
    seen = []

    @contextlib.contextmanager
    def recording(enabled):
        with reused_host_memory(enabled) as active:
            seen.append((enabled, active))
            yield active

    monkeypatch.setattr(trainer, "reused_host_memory", recording)
    _toy.run(tmp_path, "train.device=cpu", f"train.reuse_host_memory={setting}")
    assert seen == [(expected, expected and host_memory.supported())]
    assert f"reuse_host_memory: {str(expected).lower()}" in (tmp_path / "config.yaml").read_text()
