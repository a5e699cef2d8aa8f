"""wrk for the JSON load: Debian's package, installed when it is missing and the run may (root, apt-get)."""

from __future__ import annotations

import os
import shutil
import subprocess

from plan import log


def ensure_wrk() -> bool:
    """True when wrk is there, installing Debian's package first if it is missing (as root)."""
    if shutil.which("wrk"):
        return True
    if not shutil.which("apt-get") or os.geteuid() != 0:
        log("wrk is missing and cannot be installed here; using the asyncio JSON client")
        return False
    log("wrk is missing: apt-get install -y wrk")
    for steps in ([["apt-get", "install", "-y", "wrk"]], [["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]]):
        try:
            for step in steps:
                subprocess.run(step, check=True, timeout=600, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            continue
        if shutil.which("wrk"):
            return True
    log("could not install wrk; using the asyncio JSON client")
    return False
