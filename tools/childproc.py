"""One child process, started in a session of its own, whose output is searched for a line: for the tests, the tools, the bench.

``ChildProcess(argv, ...)`` starts ``argv`` (from the repository root by
default) with stdin from ``/dev/null`` and stdout and stderr merged. Its output
is either read line by line by a thread (the default: kept in memory, optionally
copied to ``log_path`` and echoed to stderr) or, with ``direct=True``, written
by the child straight into ``log_path`` and read back from there when a line is
waited for (for a child that logs a line per request under load: no pipe for
it to block on, no thread in the parent).

``wait_for_line(pattern, timeout)`` (and ``wait_for_line_async`` inside an
event loop) returns the first line that matches, or None once the output has
ended, the time is up or ``abort`` is set. ``stop()`` sends SIGTERM to the
child's PID, then SIGKILL (its PID, or its process group with
``kill_group=True``) if it has not exited in time; ``sweep_group=True`` also
kills what is left of its process group (worker processes it forked).
Processes are only ever found by their PID, never by a name pattern;
``pid_alive(pid)`` says whether one is still there.

Used by ``tests/conftest.py``, ``tests/test_demo.py``, ``tools/demo.py``,
``tools/fuzz.py`` and ``bench/procs.py``. The node's own code (``server.py``,
``config.py``, ``handlers/``, ``models/``, ``utils/``) does not import it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POLL = 0.05  # seconds between looks at the output when nothing wakes the waiter (abort, a log file)


def pid_alive(pid: int) -> bool:
    """True while a process has this PID (a zombie included: only a reaped child is gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ChildProcess:
    """A child process in its own session, its output lines searchable; stopped by its PID.

    ``log_path``: a copy of the output (with ``direct``: the output itself).
    ``stderr_path``: the child's stderr goes there instead of being merged into the output.
    ``echo``: print each line to stderr as ``NAME | line``.
    ``keep``: the number of lines kept in memory (None: all).
    ``on_eof``: called (in the reader thread) once the output has ended.
    ``die_with_parent``: the child gets SIGTERM when this process dies.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        name: str = "child",
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
        log_path: Path | None = None,
        direct: bool = False,
        stderr_path: Path | None = None,
        echo: bool = False,
        keep: int | None = None,
        on_eof: Callable[[], None] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        if direct and log_path is None:
            raise ValueError("direct output needs a log_path")
        self.name = name
        self.log_path = log_path
        self.direct = direct
        self.echo = echo
        self._lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._count = 0  # lines seen so far, the ones no longer kept included
        self._cond = threading.Condition()
        self._eof = False
        self._on_eof = on_eof
        with contextlib.ExitStack() as files:
            stdout: Any = files.enter_context(open(log_path, "wb")) if direct and log_path else subprocess.PIPE
            stderr: Any = files.enter_context(open(stderr_path, "w")) if stderr_path else subprocess.STDOUT
            self.proc = subprocess.Popen(
                argv,
                cwd=str(cwd),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                text=True,
                errors="replace",
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
        self._reader: threading.Thread | None = None
        if not direct:
            self._reader = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
            self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- output -----------------------------------------------------------------------------

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with (open(self.log_path, "w") if self.log_path else contextlib.nullcontext()) as log:
            for raw in self.proc.stdout:
                if log is not None:
                    log.write(raw)
                    log.flush()
                line = raw.rstrip("\n")
                if self.echo:
                    print(f"{self.name} | {line}", file=sys.stderr, flush=True)
                with self._cond:
                    self._lines.append(line)
                    self._count += 1
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()
        if self._on_eof is not None:
            self._on_eof()

    def _reload(self) -> None:
        """``direct``: the complete lines of the log file so far (the last one only once the child has exited)."""
        assert self.log_path is not None
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return
        lines = text.splitlines()
        if lines and not text.endswith("\n") and self.proc.poll() is None:
            lines.pop()  # still being written
        self._lines.clear()
        self._lines.extend(lines)
        self._count = len(lines)

    def _output_ended(self) -> bool:
        return self.proc.poll() is not None if self.direct else self._eof

    def _search(self, regex: re.Pattern[str], seen: int) -> tuple[re.Match[str] | None, int]:
        """The first match among the lines after the first ``seen``; the number of lines seen now. Holds ``_cond``."""
        if self.direct:
            self._reload()
        first = self._count - len(self._lines)
        for line in list(self._lines)[max(seen - first, 0) :]:
            if match := regex.search(line):
                return match, self._count
        return None, self._count

    @property
    def lines(self) -> list[str]:
        """The output lines so far (the last ``keep`` of them)."""
        with self._cond:
            if self.direct:
                self._reload()
            return list(self._lines)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def tail(self, count: int = 20) -> str:
        return "\n".join(self.lines[-count:])

    @property
    def ended(self) -> bool:
        """True once the output has ended (the child exited or closed it)."""
        with self._cond:
            return self._output_ended()

    def wait_for_line(
        self, pattern: str | re.Pattern[str], timeout: float = 10.0, abort: threading.Event | None = None
    ) -> re.Match[str] | None:
        """Block until an output line matches ``pattern``; None if the output ends, ``abort`` is set or time runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                ended = self._output_ended()
                match, seen = self._search(regex, seen)
                if match:
                    return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or ended or (abort is not None and abort.is_set()):
                    return None
                self._cond.wait(min(remaining, POLL))

    async def wait_for_line_async(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str] | None:
        """``wait_for_line`` for a caller on an event loop: the loop keeps running while it waits."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            with self._cond:
                ended = self._output_ended()
                match, seen = self._search(regex, seen)
            if match:
                return match
            if ended or time.monotonic() >= deadline:
                return None
            await asyncio.sleep(POLL)

    # -- the process ------------------------------------------------------------------------

    def alive(self, grace: float = 0.0) -> bool:
        """True while the child runs; once its output has ended, it first gets ``grace`` seconds to be reaped."""
        if grace and self.ended:
            # Its output ended, so it is exiting; the pipe closes a moment before the exit status can be read.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        return self.proc.poll() is None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to the child's PID, unless it has exited."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self, group: bool = False) -> None:
        """SIGKILL the child's PID, or its whole process group (its session: the processes it forked)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.pid, signal.SIGKILL)
            elif self.proc.poll() is None:
                os.kill(self.pid, signal.SIGKILL)

    def join(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for the reader thread to copy the last of the output."""
        if self._reader is not None:
            self._reader.join(timeout)

    def wait(self, timeout: float = 20.0) -> int:
        """The exit code, once the child has exited (TimeoutExpired after ``timeout``) and its output is read."""
        code = self.proc.wait(timeout)
        self.join(5)
        return code

    def stop(
        self,
        timeout: float = 10.0,
        *,
        kill_timeout: float = 5.0,
        kill_group: bool = False,
        sweep_group: bool = False,
        on_kill: Callable[[], None] | None = None,
    ) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL (``on_kill`` is called first); return the exit code.

        ``kill_group``: the SIGKILL goes to the process group. ``sweep_group``: whatever is left of the group
        gets SIGKILL at the end in any case.
        """
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                if on_kill is not None:
                    on_kill()
                self.kill(group=kill_group)
                self.proc.wait(kill_timeout)
        if sweep_group:
            self.kill(group=True)
        self.join(kill_timeout)
        return self.proc.returncode
