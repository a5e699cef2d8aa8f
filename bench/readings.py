"""What a benchmark run reads from ``/proc`` (CPU time, RSS, per-core load), and the percentile of its samples."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process (all its threads) and of its living child processes (workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / CLK_TCK
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children[:64]:
        try:
            total += cpu_seconds(int(child))
        except OSError:  # gone meanwhile
            pass
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def core_times() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy, total) jiffies since boot."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        match = re.match(r"cpu(\d+) (.*)", line)
        if match:
            values = [int(v) for v in match.group(2).split()]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            times[int(match.group(1))] = (sum(values) - idle, sum(values))
    return times


def busy_percent(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpu: int) -> float | None:
    if cpu not in before or cpu not in after:
        return None
    busy = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return 100.0 * busy / total if total else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile ``q`` (0-100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
