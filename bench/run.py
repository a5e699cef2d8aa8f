"""``make bench``: measure the node against a fast mock upstream, print one table.

Starts ``bench/upstream.py`` (the upstream), ``python server.py`` (the node,
pointed at it) and drives both with wrk (JSON) and the asyncio probes of
``bench/clients.py`` (streams, capacity, abort). Every figure of the node is
measured next to the same figure straight against the upstream, in the same
run. The node runs alone on CPU 0; the upstream, wrk and this script share
CPU 1. The table goes to stdout and, as markdown, to ``bench/results/``
(a timestamped file and ``latest.md``), with a PNG chart of the figures beside
it when matplotlib is installed (``bench/chart.py``). ``--quick`` runs in under
a minute.

Every loop is bounded by counts and deadlines, all traffic stays on loopback,
and every process started here is stopped by PID in ``finally`` blocks (also
on Ctrl-C or SIGTERM); children also get SIGTERM if this script dies.

This file is the entry point; the work is in ``plan.py`` (the run's sizes),
``procs.py`` (the processes), ``readings.py`` (``/proc``), ``load.py`` (the
load generators), ``phases.py`` (the phases and their ``Measurements``),
``report.py`` (the table, the notes, the files; the chart through
``chart.py``) and ``wrk.py`` (installing wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from phases import Bench
from plan import FD_RESERVE, FULL, QUICK, log
from procs import Processes, pin_self
from report import report, save
from upstream import raise_fd_limit
from wrk import ensure_wrk


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark the node against a fast mock upstream.")
    parser.add_argument("--quick", action="store_true", help="fewer requests, 1,000 streams at most: under a minute")
    parser.add_argument("--rounds-only", action="store_true",
                        help="only the alternated JSON rounds (node, its variants, floors); printed, not saved")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    fd_limit = raise_fd_limit(4 * max(plan.holds) + 4096)
    if fd_limit < 2 * max(plan.holds) + FD_RESERVE:
        log(f"only {fd_limit} file descriptors allowed: the node will hold at most {(fd_limit - FD_RESERVE) // 2:,} streams")
    use_wrk = ensure_wrk()
    pinned = pin_self()
    logdir = Path(tempfile.mkdtemp(prefix="mira-bench-"))
    procs = Processes(logdir, pinned)
    when = datetime.now()
    log(f"{plan.name} run")
    try:
        measurements = asyncio.run(Bench(plan, procs, use_wrk, fd_limit).run(rounds_only=args.rounds_only))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log(f"interrupted: every process stopped; their output is in {logdir}")
        return 130
    except Exception as exc:  # a setup step failed (no upstream, no node): say what, after the clean-up
        log(f"benchmark failed: {exc.__class__.__name__}: {exc}; the processes' output is in {logdir}")
        return 1
    finally:
        procs.stop_all()
    shutil.rmtree(logdir, ignore_errors=True)
    text = report(measurements, use_wrk, pinned, when)
    print(text)
    if not args.rounds_only:
        save(text, measurements, when)
    return 0


if __name__ == "__main__":
    sys.exit(main())
