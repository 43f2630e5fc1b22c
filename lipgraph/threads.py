"""The default number of torch CPU threads: the cores other processes leave idle.

On a machine whose cores are busy, torch's default (one OpenMP thread per core) is several times slower than one
thread: its threads spin while waiting for cores that other processes hold (benchmarks/RESULTS.md, "Threads": the
README's ResNet-18 command took 187 s with torch's 2 threads and 45 s with 1 on a shared 2-core VM with load 11).
The idle cores are estimated from the 1-minute load average, which does not yet count the starting process.
"""
from __future__ import annotations

import os

import torch


def idle_threads() -> int:
    """min(torch's thread count, cores − 1-minute load average, rounded), at least 1."""
    try:
        busy = os.getloadavg()[0]
    except OSError:  # no load average on this platform: torch's default
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), cores - int(busy + 0.5)))
