"""Training on CPU reuses the memory a step frees instead of faulting it back in from the kernel
(engine/host_memory.py; issue 28: 600,000 minor page faults per step cost our loop 15-25%)."""
from __future__ import annotations

import contextlib
import resource
from pathlib import Path

import pytest
import torch

import _toy
from vissl_lite.engine import host_memory, trainer
from vissl_lite.engine.host_memory import reused_host_memory

BLOCK = 96 << 20     # larger than glibc's largest mmap threshold (32 MB): mmap'd afresh by default
PAGES = BLOCK // 4096
glibc_only = pytest.mark.skipif(not host_memory.supported(), reason="mallopt is glibc's")


def faults_to_refill(nbytes: int, warmup: int = 4) -> int:
    """Minor page faults of writing a new block of ``nbytes`` after ``warmup`` blocks of that size
    were written and freed: a step's activations, allocated again the step after. (The first
    few land higher up the heap each time: torch asks for aligned blocks, which a freed block of
    exactly that size cannot serve until its neighbours are free too.)"""
    for _ in range(warmup):
        torch.empty(nbytes, dtype=torch.uint8).fill_(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(nbytes, dtype=torch.uint8).fill_(1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def huge_pages_always() -> bool:
    """Transparent huge pages for every mapping: 2 MB faults, so the default's cost is not seen
    as a count of 4 kB pages."""
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.is_file() and "[always]" in path.read_text()


@glibc_only
def test_a_freed_block_is_reused_inside_and_faulted_in_afresh_after():
    with reused_host_memory(True) as active:
        assert active
        inside = faults_to_refill(BLOCK)
    after = faults_to_refill(BLOCK)
    assert inside < 0.02 * PAGES, f"{inside} faults refilling {PAGES} reused pages"
    if not huge_pages_always():
        assert after > 0.5 * PAGES, "glibc's defaults are back after the context"


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
