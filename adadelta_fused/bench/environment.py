"""What produced the numbers: the device, its caches and free memory, the software versions, the git SHA.

Every saved result carries ``describe(device)``, so a number is never separated from its hardware.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

from .. import __version__, _extension, available_backends

# When a cache or memory size cannot be read, assume a large server part: rotating more data than needed
# only costs memory, while assuming too small a cache would let it flatter small sizes.
_FALLBACK_CACHE_BYTES = 256 * 2**20


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def last_level_cache_bytes(device: torch.device) -> int:
    """The largest cache in front of the device's memory: the GPU's L2, or the CPU's highest level."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)) or _FALLBACK_CACHE_BYTES
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            sizes.append(_parse_cache_size((index / "size").read_text().strip()))
        except (OSError, ValueError):
            continue
    return max(sizes, default=_FALLBACK_CACHE_BYTES)


def _parse_cache_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def git_revision() -> dict[str, object] | None:
    """The commit of the checkout the package was imported from, and whether it had local changes."""
    source = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=source, capture_output=True, text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"sha": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(device: torch.device) -> dict[str, object]:
    """Hardware and software facts recorded beside every number."""
    info: dict[str, object] = {
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "last_level_cache_bytes": last_level_cache_bytes(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": _package_version("triton"),
        "numpy": _package_version("numpy"),
        "adadelta_fused": __version__,
        "extension": _extension.build_info(),
        "backends": available_backends(),
        "git": git_revision(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info["cuda"] = torch.version.cuda
        info["gpu_memory_bytes"] = properties.total_memory
        info["gpu_multiprocessors"] = properties.multi_processor_count
    return info
