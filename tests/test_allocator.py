"""Freed memory stays mapped: a training step's large buffers reuse the previous step's pages."""

from gptlab import allocator

class FakeLibc:
    def __init__(self):
        self.calls = []

        def mallopt(param, value):
            self.calls.append((param, value))
            return 1

        self.mallopt = mallopt

def test_retaining_asks_glibc_for_no_mmapped_blocks_and_no_trimming(monkeypatch):
    # the effect itself (page faults per 124M step 358-376k -> ~0, +13-15 % tokens/s) is measured by
    # `gptlab bench train`, which prints the faults per step; here: the settings asked for, once per process
    libc = FakeLibc()
    monkeypatch.setattr(allocator, "_retained", None)
    monkeypatch.delenv("GPTLAB_MALLOC", raising=False)
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: libc)
    assert allocator.retain_freed_memory() is True
    assert libc.calls == [(allocator.M_TRIM_THRESHOLD, 2**31 - 1), (allocator.M_MMAP_MAX, 0)]
    assert allocator.retain_freed_memory() is True and len(libc.calls) == 2

def test_system_setting_leaves_the_c_library_alone(monkeypatch):
    monkeypatch.setattr(allocator, "_retained", None)
    monkeypatch.setenv("GPTLAB_MALLOC", "system")
    called = []
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: called.append(a))
    assert allocator.retain_freed_memory() is False and called == []
