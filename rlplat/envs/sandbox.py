"""Run a program a model wrote in a subprocess it cannot get out of, and say what stopped it.

``Sandbox(Limits(...)).run(argv)`` returns a ``SandboxResult``; it never raises because of what the
program does. Each call gets:

- a CPU-time limit (``RLIMIT_CPU``: SIGXCPU), an address-space limit (``RLIMIT_AS``), a file-size
  limit (``RLIMIT_FSIZE``), no core dumps;
- a private working directory (``HOME`` and ``TMPDIR`` too), removed afterwards, and an environment
  holding only ``PATH``, ``HOME``, ``TMPDIR`` and ``LANG``: none of the parent's variables;
- stdout and stderr read up to ``output_bytes`` each; a program that writes more is killed at once
  (the rest is never read) and the result says ``output``;
- a wall-clock timeout after which the whole process tree is SIGKILLed.

Where the OS allows (``sandbox_launch.py`` does the work in the child), also:

- ``network``: a network namespace of its own, with no interface up: every connection fails;
- ``filesystem``: a mount namespace in which every mount is read-only and nosuid except the
  working directory, so nothing outside it can be written, world-writable directories included;
- ``processes``: a pid namespace of its own with its own ``/proc`` (no other process is visible:
  not the parent's ``/proc/<pid>/environ``, not its command line), whose init reaps orphans; when
  the program exits or is killed, the kernel kills everything it left there, ``setsid`` or not;
- ``user`` (root only): the program runs under a uid and gid of its own (one per call, drawn from
  the top of the uid range the process may use), so ``RLIMIT_NPROC`` caps its processes without
  counting anyone else's (a fork bomb fails to fork) and root's files are closed to it.
  Directories an unprivileged uid cannot reach but the program needs (an interpreter under
  ``/root``) are exposed read-only one by one (``expose``); the rest of their parent stays hidden.

As root all four are in force. Unprivileged, the first three come from a user namespace where the
kernel allows one (``kernel.unprivileged_userns_clone``, AppArmor's userns restriction), and
``user`` is missing: the process count is not capped (``RLIMIT_NPROC`` would count all the
caller's processes), and the program has the caller's file permissions outside the read-only
mounts. Without namespaces, strays are killed through the process group only (a ``setsid``
escapes it) and the parent's ``/proc/<pid>/environ`` is readable. Whatever is not in force is
listed in ``SandboxResult.missing`` with the reason; docs/envs.md says what no mode protects.
"""
from __future__ import annotations

import itertools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

LAUNCHER = str(Path(__file__).with_name("sandbox_launch.py"))
PROTECTIONS = ("network", "filesystem", "processes", "user")
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
_EXIT_GRACE_S = 0.1  # after the program exits, how long its leftovers may still write to the pipes
_READ_CHUNK = 65536
_NOBODY = 65534  # never handed out: its process cap would count the system's nobody processes

# How a limit shows: a signal the program died of, or a message near the end of its stderr.
SIGNAL_LIMITS = {-signal.SIGXCPU: "cpu", -signal.SIGXFSZ: "file_size"}
STDERR_LIMITS = {
    "MemoryError": "memory",  # Python, under RLIMIT_AS
    "Cannot allocate memory": "memory",  # C programs and the shell
    "std::bad_alloc": "memory",
    "File too large": "file_size",  # Python ignores SIGXFSZ, so the write fails with EFBIG instead
    "Resource temporarily unavailable": "processes",  # fork under RLIMIT_NPROC (EAGAIN)
}
_STDERR_TAIL = 2000  # characters of stderr searched for the messages above


@dataclass(frozen=True)
class Limits:
    """Per call. ``wall_s``: seconds of wall clock; ``cpu_s``: whole seconds of CPU per process;
    ``memory_mb``: address space per process (MiB; an interpreter needs ~30); ``file_mb``: largest
    file it may write (MiB); ``processes``: processes and threads of its uid at once (root only);
    ``output_bytes``: of stdout and of stderr each."""

    wall_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 512
    file_mb: float = 16.0
    processes: int = 32
    output_bytes: int = 65536

    def __post_init__(self) -> None:
        for name in ("wall_s", "cpu_s", "memory_mb", "file_mb", "processes", "output_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)!r}")
        if not isinstance(self.cpu_s, int):
            raise ValueError(f"Limits.cpu_s must be a whole number of seconds (RLIMIT_CPU), got {self.cpu_s!r}")


@dataclass(frozen=True)
class SandboxResult:
    """stdout / stderr: decoded text, at most ``output_bytes`` each. exit_code: the program's exit
    status, negative for the signal that ended it (-9 when the sandbox killed it), None when it never
    started. limits: the limits it hit, in order of ``Limits``' fields (``timeout``, ``cpu``,
    ``memory``, ``file_size``, ``processes``, ``output``). missing: {protection: reason} for
    ``PROTECTIONS`` not in force. error: why the sandbox itself failed (empty: it did not)."""

    stdout: str
    stderr: str
    exit_code: Optional[int]
    limits: Tuple[str, ...] = ()
    missing: Dict[str, str] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.limits and not self.error


@lru_cache(maxsize=1)
def _uid_block() -> Optional[Tuple[int, int]]:
    """(first uid, count) for sandboxed calls: the 2**30 uids from 2**30 under a full map, else the
    upper half of the largest uid range mapped into this user namespace (a rootless container's),
    stopping below nobody (65534). None when that leaves fewer than 256 uids."""
    with open("/proc/self/uid_map") as f:
        ranges = [tuple(map(int, line.split())) for line in f if line.strip()]
    inside, _, count = max(ranges, key=lambda r: r[2])
    if count >= 2**31:
        return 2**30, 2**30
    low, high = inside + count // 2, inside + count
    if low <= _NOBODY < high:
        high = _NOBODY
    return (low, high - low) if high - low >= 256 else None


_calls = itertools.count()


def _next_uid() -> Optional[int]:
    """A uid no other call in flight uses: from the pid and a counter (256 calls in flight per process)."""
    block = _uid_block() if os.geteuid() == 0 else None
    if block is None:
        return None
    first, count = block
    return first + (os.getpid() * 256 + next(_calls) % 256) % count


def _remove(path: str) -> None:
    """Remove a working directory, whatever modes the program left on it."""

    def retry(func, target, _exc_info):
        os.chmod(os.path.dirname(target), 0o700)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, 0o700)
        func(target)

    shutil.rmtree(path, onerror=retry)


@dataclass
class _Collected:
    """What the parent saw: raw stdout / stderr (capped), the launcher's status lines, and why it stopped reading."""

    out: Dict[str, bytearray]
    timed_out: bool = False
    overflow: bool = False


def _collect(proc: subprocess.Popen, status_fd: int, limits: Limits) -> _Collected:
    """Read stdout, stderr and the status pipe until the program and its pipes are done, the wall
    clock runs out, or a stream passes ``output_bytes``. A pidfd tells when the program exits;
    processes it left behind get ``_EXIT_GRACE_S`` more to flush the pipes they hold."""
    got = _Collected({"stdout": bytearray(), "stderr": bytearray(), "status": bytearray()})
    deadline = time.monotonic() + limits.wall_s
    stop, exited = deadline, False
    pidfd = os.pidfd_open(proc.pid)
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        sel.register(status_fd, selectors.EVENT_READ, "status")
        sel.register(pidfd, selectors.EVENT_READ, "exit")
        try:
            while not got.overflow:
                streams = {key.data for key in sel.get_map().values()} & {"stdout", "stderr"}
                if exited and not streams:
                    break
                now = time.monotonic()
                if now >= stop:
                    got.timed_out = not exited
                    break
                for key, _ in sel.select(stop - now):
                    if key.data == "exit":
                        sel.unregister(pidfd)
                        exited, stop = True, min(deadline, time.monotonic() + _EXIT_GRACE_S)
                        continue
                    chunk = os.read(key.fd, _READ_CHUNK)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    buf = got.out[key.data]
                    room = limits.output_bytes - len(buf) if key.data != "status" else len(chunk)
                    buf += chunk[:room]
                    got.overflow |= len(chunk) > room
        finally:
            os.close(pidfd)
    return got


def _limits_hit(code: Optional[int], stderr: str, got: _Collected) -> Tuple[str, ...]:
    hit = {SIGNAL_LIMITS.get(code or 0)}
    # Any of its processes may have printed the message (a child's fork failing), so the program's
    # own exit status does not decide; a program that prints such a text itself is reported too.
    tail = stderr[-_STDERR_TAIL:]
    hit.update(limit for marker, limit in STDERR_LIMITS.items() if marker in tail)
    if got.timed_out:
        hit.add("timeout")
    if got.overflow:
        hit.add("output")
    order = ("timeout", "cpu", "memory", "file_size", "processes", "output")
    return tuple(name for name in order if name in hit)


class Sandbox:
    """Runs programs under ``limits`` (see the module docstring). Thread-safe: calls share nothing."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits

    def run(self, argv: Sequence[str], expose: Sequence[str] = ()) -> SandboxResult:
        """Run ``argv`` (``argv[0]`` looked up on the sandbox's ``PATH``) in a fresh working
        directory, stdin empty. ``expose``: directories the program must read although an ancestor
        is closed to an unprivileged uid (an interpreter's prefix); root only, read-only."""
        start = time.monotonic()
        base = tempfile.mkdtemp(prefix="rlplat-sandbox-")
        uid = _next_uid()
        try:
            workdir = self._workdir(base, uid)
            result = self._launch(list(argv), workdir, uid, [os.path.realpath(p) for p in expose])
        except OSError as exc:  # the sandbox could not start (fds, disk): no program ran
            result = SandboxResult("", "", None, error=f"sandbox failed to start: {exc}")
        finally:
            _remove(base)
        return replace(result, seconds=time.monotonic() - start)

    @staticmethod
    def _workdir(base: str, uid: Optional[int]) -> str:
        workdir = os.path.join(base, "work")
        os.mkdir(workdir, 0o700)
        if uid is not None:
            os.chmod(base, 0o711)  # traversable by the sandbox uid, not listable
            os.chown(workdir, uid, uid)
        return workdir

    def _launch(self, argv: List[str], workdir: str, uid: Optional[int], expose: List[str]) -> SandboxResult:
        lim = self.limits
        cfg = {
            "argv": argv, "env": {**_ENV, "HOME": workdir, "TMPDIR": workdir}, "workdir": workdir, "uid": uid,
            "expose": expose,
            "limits": {"cpu_s": lim.cpu_s, "memory_bytes": lim.memory_mb * 2**20, "file_bytes": int(lim.file_mb * 2**20),
                       "processes": lim.processes},
        }
        status_r, status_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", LAUNCHER, json.dumps(cfg), str(status_w)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(status_w,),
                env=dict(_ENV), cwd="/", start_new_session=True,  # its own process group, for the kill
            )
        finally:
            os.close(status_w)
        try:
            got = _collect(proc, status_r, lim)
        finally:
            self._kill(proc)
            proc.stdout.close()
            proc.stderr.close()
            os.close(status_r)
        return self._result(proc.returncode, got)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        """SIGKILL the launcher's process group: the launcher, the pid namespace's init (whose death
        kills all the namespace holds) and, without a pid namespace, the program unless it left the group."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # the group is gone already
            pass
        proc.wait()

    @staticmethod
    def _result(code: Optional[int], got: _Collected) -> SandboxResult:
        status: Dict = {}
        for line in got.out["status"].decode("utf-8", "replace").splitlines():
            status.update(json.loads(line))
        stdout = got.out["stdout"].decode("utf-8", "replace")
        stderr = got.out["stderr"].decode("utf-8", "replace")
        if "missing" not in status and "error" not in status:  # the launcher died before reporting
            status["error"] = f"sandbox launcher failed (exit {code}): {stderr[-_STDERR_TAIL:]}"
        if "error" in status:
            return SandboxResult(stdout, stderr, None, missing=status.get("missing", {}), error=status["error"])
        code = status.get("exit", code)  # the program's own status; absent: it was killed with the launcher
        return SandboxResult(stdout, stderr, code, _limits_hit(code, stderr, got), status["missing"])


__all__ = ["LAUNCHER", "PROTECTIONS", "Limits", "Sandbox", "SandboxResult"]
