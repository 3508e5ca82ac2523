"""The machine a benchmark ran on: its description (:func:`machine_info`) and dense reference rates measured in the
calling process (:func:`dense_rates`): what "close to the limit" means.

``dense_rates(device)`` times a 3x3 convolution (batch 8, 256 -> 256 channels, 32x32, forward) and a 2048x2048
matmul, in fp32 and bf16, and returns GFLOP/s for each (median of several runs after a warm-up), with the
process's current thread setting.
"""
from __future__ import annotations

import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F


def _rate(fn, flops: float, device: torch.device, repeats: int = 7) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return flops / statistics.median(times) / 1e9


def machine_info(device: torch.device) -> dict:
    """CPU, cores, threads, torch and Python versions, device (name on CUDA) and the load average at the call."""
    return {"cpu": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            # PyTorch's huge-page advice for large CPU tensors (gensynth's command line turns it on: gensynth/runtime.py)
            "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE")}


def dense_rates(device: torch.device) -> dict[str, float]:
    """{'conv_fp32', 'conv_bf16', 'matmul_fp32', 'matmul_bf16'} in GFLOP/s."""
    out = {}
    b, c, h, w, k = 8, 256, 32, 32, 3
    conv_flops = 2.0 * b * c * c * k * k * h * w
    n = 2048
    mm_flops = 2.0 * n ** 3
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x = torch.randn(b, c, h, w, device=device, dtype=dtype)
        wt = torch.randn(c, c, k, k, device=device, dtype=dtype)
        a = torch.randn(n, n, device=device, dtype=dtype)
        bm = torch.randn(n, n, device=device, dtype=dtype)
        with torch.no_grad():
            out[f"conv_{name}"] = _rate(lambda: F.conv2d(x, wt, padding=1), conv_flops, device)
            out[f"matmul_{name}"] = _rate(lambda: a @ bm, mm_flops, device)
    return out


if __name__ == "__main__":
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"{torch.get_num_threads()} threads on {dev}:",
          ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in dense_rates(dev).items()))
