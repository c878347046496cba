"""How much memory a worker's device has and has free: for /status, for the cache's budget, and for
the one line a job that ran out of memory ends with."""

from __future__ import annotations

import psutil
import torch


def memory(device: str) -> tuple[int, int]:
    """(total, free) bytes of the device, or of RAM for a CPU worker."""
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info(torch.device(device))
        return int(total), int(free)
    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def in_use(device: str) -> str:
    """'14.2 of 16.0 GB in use on cuda:0', for a person."""
    total, free = memory(device)
    where = device if device.startswith("cuda") else "RAM"
    return f"{(total - free) / 1e9:.1f} of {total / 1e9:.1f} GB in use on {where}"


def default_budgets(device: str) -> tuple[int, int]:
    """(device, CPU RAM) cache budgets from the memory free when the worker starts: another process
    on the same card (a second worker, a desktop, another program) keeps what it holds."""
    ram = psutil.virtual_memory().available
    if device.startswith("cuda"):
        _total, free = memory(device)
        return max(free - (3 << 30), free // 2), int(ram * 0.4)  # room left for activations
    return int(ram * 0.5), 0
