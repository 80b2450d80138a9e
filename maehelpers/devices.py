"""The device and the precision: which one a run uses, and how a result names them.

CUDA when present, else the CPU; mixed precision on CUDA only (bf16 from compute capability 8.0, fp16
with a GradScaler below), and TF32 for the fp32 matrix products that remain there.
"""
import platform
from pathlib import Path

import torch


def pick_device(device=None) -> torch.device:
    """The device to use: the one asked for, else CUDA when present, else CPU. On CUDA, fp32 matrix
    products may use TF32 (Ampere and newer): the paths that stay fp32 (amp off, metrics, probes)
    then run on tensor cores, as PyTorch's own recommendation for training."""
    device = torch.device(device if device not in (None, "", "auto") else
                          "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    return device


def amp_dtype(device: torch.device, enabled: bool = True, capability: tuple | None = None):
    """Mixed precision on CUDA only, as the official recipe: bf16 on compute capability >= 8.0
    (A100, L4, H100, ...), fp16 with a GradScaler below (T4, V100: their bf16 is emulated).
    None (fp32) on CPU or when switched off (train.amp false)."""
    if device.type != "cuda" or not enabled:
        return None
    major, _ = capability or torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def precision_name(dtype) -> str:
    """'bf16', 'fp16' or 'fp32': how results and checkpoints name the precision of an autocast dtype."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the thread count: what results.json records."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_name()}, {torch.get_num_threads()} threads"


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
