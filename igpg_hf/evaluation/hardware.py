"""What this machine can do at best, measured: the bounds speed figures are stated against.

`measure_machine_bounds` times fp32 matrix products (GFLOP/s per thread count), a large memory copy
and a read of a buffer the size of a model's weights (GB/s), and the latency of a trivial torch op (the
floor of every decode step's per-op overhead). `peak_memory` measures a call's peak resident memory.
Figures taken while other processes run are low: `MachineBounds.load_average` says how busy the
machine was.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..sampling import torch_threads

__all__ = ["MachineBounds", "measure_machine_bounds", "peak_memory"]


@dataclass
class MachineBounds:
    """Measured bounds (best of repeats). matmul_gflops: {threads: fp32 GFLOP/s of an n x n product};
    copy_gb_s: bytes copied per second for a buffer far larger than the caches; read_gb_s: bytes read per
    second from a buffer of ``read_bytes`` (a model's weights: may sit in cache); op_latency_us: one trivial
    op (a one-element in-place add); load_average: the 1-minute load average before measuring."""

    matmul_gflops: dict[int, float]
    copy_gb_s: float
    read_gb_s: float
    read_bytes: int
    op_latency_us: float
    cpu_count: int
    load_average: float
    torch_version: str = torch.__version__
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["matmul_gflops"] = {str(k): v for k, v in self.matmul_gflops.items()}
        return d


def _best(fn: Callable[[], Any], repeats: int, inner: int = 1) -> float:
    """Best wall time of ``inner`` calls, over ``repeats`` tries, per call (one warm-up first)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t) / inner)
    return best


def _best_copy(nbytes: int, repeats: int) -> float:
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    return _best(lambda: dst.copy_(src), repeats)


def measure_machine_bounds(
    threads: tuple[int, ...] = (1, 2),
    matmul_size: int = 1024,
    copy_bytes: int = 256 << 20,
    read_bytes: int = 4 << 20,
    repeats: int = 5,
) -> MachineBounds:
    """Measure the bounds in a few seconds (defaults: 1024^2 fp32 products, a 256 MiB copy, a 4 MiB read).

    ``read_bytes``: the size of the weights a decode step reads (e.g. ``4 * prior parameters``). The copy and
    read use torch's current thread count; the products each count in ``threads``.
    """
    load = os.getloadavg()[0]
    a = torch.randn(matmul_size, matmul_size)
    b = torch.randn(matmul_size, matmul_size)
    flops = 2.0 * matmul_size**3
    gflops = {}
    for n in threads:
        with torch_threads(n):
            gflops[n] = flops / _best(lambda: torch.mm(a, b), repeats) / 1e9
    copy = copy_bytes / _best_copy(copy_bytes, repeats) / 1e9
    weights = torch.ones(max(read_bytes // 4, 1))
    read = weights.numel() * 4 / _best(lambda: weights.sum(), repeats, inner=10) / 1e9
    x = torch.zeros(1)
    latency = _best(lambda: x.add_(1), repeats, inner=2000) * 1e6
    return MachineBounds(
        matmul_gflops=gflops,
        copy_gb_s=copy,
        read_gb_s=read,
        read_bytes=weights.numel() * 4,
        op_latency_us=latency,
        cpu_count=os.cpu_count() or 1,
        load_average=load,
        settings={
            "matmul_size": matmul_size,
            "copy_bytes": copy_bytes,
            "torch_threads": torch.get_num_threads(),
        },
    )


def _rss_mb(field_name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"{field_name} not in /proc/self/status")


def peak_memory(fn: Callable[[], Any]) -> tuple[Any, float, float, str]:
    """(result, seconds, peak resident memory above the start in MB, method) of calling ``fn``."""
    try:  # Linux: reset the high-water mark, so VmHWM - VmRSS is this call's peak growth
        Path("/proc/self/clear_refs").write_text("5")
        start, method = (
            _rss_mb("VmRSS"),
            "peak RSS (VmHWM after a reset via /proc/self/clear_refs) minus RSS at start",
        )
    except OSError:
        start, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ru_maxrss growth"
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    peak = (
        _rss_mb("VmHWM")
        if method.startswith("peak")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return out, seconds, max(0.0, peak - start), method
