"""Freed memory stays mapped: a training step's large buffers reuse the previous step's pages."""

import pytest
import torch

from gptlab import allocator


def faults_of_a_large_transient_buffer() -> int:
    f0 = allocator.minor_faults()
    torch.empty(16 * 2**20).fill_(1.0)  # 64 MiB, allocated, touched and freed, like a step's logits gradient
    return allocator.minor_faults() - f0


def test_a_repeated_large_buffer_faults_no_pages_in_once_retained():
    if not allocator.retain_freed_memory():
        pytest.skip("not glibc (or GPTLAB_MALLOC=system): the C library's own behaviour stands")
    faults_of_a_large_transient_buffer()  # the heap grows once
    assert faults_of_a_large_transient_buffer() < 1000  # 64 MiB fresh would be 16,384 faults of 4 KiB pages


def test_system_setting_leaves_the_c_library_alone(monkeypatch):
    monkeypatch.setattr(allocator, "_retained", None)
    monkeypatch.setenv("GPTLAB_MALLOC", "system")
    called = []
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: called.append(a))
    assert allocator.retain_freed_memory() is False and called == []
