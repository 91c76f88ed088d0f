"""The environment a run measured: GPU, driver, CUDA, library versions, git commit."""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
from pathlib import Path

import torch

# Distribution names of every package a mechanism or the harness may use.
PACKAGES = ("attnbench", "torch", "triton", "fla-core", "lightning-attn", "xformers",
            "flash-attn", "numpy", "pandas", "pyarrow", "matplotlib")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str | None:
    """Commit of the attnbench source tree (with ``+dirty`` if it has uncommitted changes)."""
    src = Path(__file__).resolve().parent.parent
    commit = _run(["git", "rev-parse", "HEAD"], cwd=src)
    if commit is None:
        return None
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src)
    return commit + ("+dirty" if dirty else "")


def gpu_info() -> dict:
    if not torch.cuda.is_available():
        return {"gpu": None}
    props = torch.cuda.get_device_properties(0)
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return {
        "gpu": props.name,
        "gpu_count": torch.cuda.device_count(),
        "gpu_memory_mib": props.total_memory // (1024 * 1024),
        "sm_count": props.multi_processor_count,
        "compute_capability": f"{props.major}.{props.minor}",
        "driver": driver.splitlines()[0] if driver else None,
        "cuda": torch.version.cuda,
    }


def environment() -> dict:
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        **gpu_info(),
        "packages": package_versions(),
        "git_commit": git_commit(),
    }
