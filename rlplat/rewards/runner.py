"""Run a reward function over a batch in worker processes, each call under a timeout.

Why processes: a Python thread cannot be stopped, so a reward function that hangs (a sympy
simplification that never ends, a sandboxed program stuck in a loop) would hang the run. Each
worker is a fresh interpreter (``subprocess``, not ``fork``: no inherited CUDA / Ray state, and
not ``multiprocessing`` spawn: no re-import of the parent's ``__main__``) in its own process
group; a call that runs past ``timeout_s`` gets its whole group SIGKILLed and the worker replaced.

Cost: workers are persistent and get chunks of calls; each finished call streams one small
message back (that is what lets the parent time every call separately). The per-call overhead
is ~20 us (measured on 2 CPU cores for a trivial function, 1 or 2 workers); a worker start is
~0.2-2 s (Python + the reward module's imports) and is paid once, plus once per timeout or crash.

One-time costs (heavy imports, loading a verifier model) should not count against the timeout
of a worker's first call: a reward function may carry a ``warmup`` attribute, a callable that
each worker runs once before reporting ready (``math_reward.warmup`` imports math-verify).

Failures are never turned into a reward. An exception, a non-number / NaN / inf return, a
timeout or a crashed worker leaves that sample ``valid=False`` with reward NaN, is counted
(``errors`` / ``timeouts``) and is recorded (index, response, error summary) in
``RewardOutcome.failures``. What to do with invalid samples is the caller's explicit choice;
the controller's recommended policy is ``RewardOutcome.group_valid``: drop every group that
contains an invalid sample from the update (a substitute reward would bias the group baseline)
and log ``metrics()`` every step.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Sequence, Tuple, Union

from rlplat.rewards import RewardFn, accepted_columns, resolve_reward, select_columns

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# (response, answer, prompt) or (response, answer, prompt, columns): ``columns`` is the data row's
# other fields (PromptRow.extra); the function gets those it accepts (rlplat.rewards.select_columns).
RewardCall = Union[Tuple[str, Optional[str], str], Tuple[str, Optional[str], str, Dict[str, Any]]]
_MAX_RESPONSE_CHARS = 1000  # of a failed sample's response kept in its record
_MAX_MESSAGE_CHARS = 2000
_TRACEBACK_LINES = 12  # the innermost lines of a reward function's traceback
_CHUNKS_PER_WORKER = 4  # smaller chunks balance load and requeue less after a timeout
_ORPHAN_CHECK_S = 1.0

# The child sees exactly the parent's sys.path (a reward module found by the parent is found by
# the child) before anything of rlplat is imported.
_CHILD_CODE = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "from rlplat.rewards.runner import _child_main; _child_main(int(sys.argv[2]), int(sys.argv[3]))"
)


class RewardSetupError(RuntimeError):
    """The reward function could not be loaded in a worker process (not a per-sample failure)."""


@dataclass
class RewardFailure:
    """One sample whose reward could not be computed. ``kind``: ``error`` (exception or bad
    return value), ``timeout``, or ``crash`` (the worker process died). ``fn``: the reward
    function's name (``reward.fns[i].name``) when the run has several, else empty."""

    index: int
    kind: str
    response: str
    message: str
    fn: str = ""


@dataclass
class RewardOutcome:
    """Rewards of a batch of B samples.

    rewards   Float32 [B]  the function's value; NaN where ``valid`` is False
    valid     Bool    [B]  the call returned a finite number in time
    errors    exceptions + bad return values + crashed workers (``kind`` error or crash)
    timeouts  calls stopped after ``timeout_s``
    failures  one record per failed call, in index order (a sample may fail in several functions)
    seconds   wall time of the batch; call_seconds_mean / _max over the calls that returned
    components  name -> Float32 [B], each weighted function's own value (NaN where it failed);
                empty for a single function's outcome (``rlplat.rewards.weighted`` fills it)
    """

    rewards: "torch.Tensor"
    valid: "torch.Tensor"
    errors: int = 0
    timeouts: int = 0
    failures: List[RewardFailure] = field(default_factory=list)
    seconds: float = 0.0
    call_seconds_mean: float = 0.0
    call_seconds_max: float = 0.0
    components: Dict[str, "torch.Tensor"] = field(default_factory=dict)

    @property
    def num_invalid(self) -> int:
        return self.errors + self.timeouts

    def group_valid(self, group_ids: "torch.Tensor") -> "torch.Tensor":
        """Bool [B]: True for samples whose whole group (same ``group_ids`` entry) is valid."""
        import torch

        bad_groups = torch.unique(group_ids[~self.valid])
        return ~torch.isin(group_ids, bad_groups)

    def metrics(self) -> Dict[str, float]:
        """``reward/*`` counts and times; per function of several: ``reward/fn/<name>/mean`` (over
        its valid values, NaN when none), ``/errors`` and ``/timeouts``. ``reward/invalid_frac`` is
        the share of samples without a reward (a sample failing in two functions counts once)."""
        n = max(int(self.valid.numel()), 1)
        out = {
            "reward/errors": float(self.errors),
            "reward/timeouts": float(self.timeouts),
            "reward/invalid_frac": float((~self.valid).sum()) / n,
            "reward/seconds": self.seconds,
            "reward/call_seconds_max": self.call_seconds_max,
        }
        for name, values in self.components.items():
            ok = values[~values.isnan()]
            out[f"reward/fn/{name}/mean"] = float(ok.mean()) if ok.numel() else math.nan
            out[f"reward/fn/{name}/errors"] = float(sum(f.fn == name and f.kind != "timeout" for f in self.failures))
            out[f"reward/fn/{name}/timeouts"] = float(sum(f.fn == name and f.kind == "timeout" for f in self.failures))
        return out

    @staticmethod
    def concat(outcomes: Sequence["RewardOutcome"]) -> "RewardOutcome":
        """One outcome for the row-wise concatenation of the outcomes' batches (in order):
        counts and seconds add up, failure indices shift to the concatenated rows."""
        import torch

        if not outcomes:
            raise ValueError("RewardOutcome.concat needs at least one outcome")
        failures, offset = [], 0
        for o in outcomes:
            failures.extend(dataclasses.replace(f, index=f.index + offset) for f in o.failures)
            offset += int(o.valid.numel())
        returned = [max(int(o.valid.numel()) - o.timeouts, 0) for o in outcomes]  # calls that returned (crashes aside): the means' weights
        return RewardOutcome(
            rewards=torch.cat([o.rewards for o in outcomes]), valid=torch.cat([o.valid for o in outcomes]),
            errors=sum(o.errors for o in outcomes), timeouts=sum(o.timeouts for o in outcomes), failures=failures,
            seconds=sum(o.seconds for o in outcomes),
            call_seconds_mean=sum(o.call_seconds_mean * n for o, n in zip(outcomes, returned)) / max(sum(returned), 1),
            call_seconds_max=max(o.call_seconds_max for o in outcomes),
            components={k: torch.cat([o.components[k] for o in outcomes]) for k in outcomes[0].components})

    def summary(self, max_items: int = 3) -> str:
        head = f"{self.num_invalid} of {self.valid.numel()} rewards failed ({self.errors} errors, {self.timeouts} timeouts)"
        lines = [head] + [
            f"  sample {f.index} [{f.kind}] response={f.response[:60]!r}: {f.message.strip().splitlines()[-1][:200]}"
            for f in self.failures[:max_items]
        ]
        if len(self.failures) > max_items:
            lines.append(f"  ... and {len(self.failures) - max_items} more")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- child process
def _check_value(value: Any) -> Tuple[Optional[float], Optional[str]]:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None, f"reward function returned {type(value).__name__} {str(value)[:80]!r}, expected a float"
    value = float(value)
    if not math.isfinite(value):
        return None, f"reward function returned {value}, expected a finite float"
    return value, None


def _describe(exc: BaseException) -> str:
    # Skip the runner's own frame: the user wants their function's frames.
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    lines = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip().splitlines()
    return "\n".join(lines[-_TRACEBACK_LINES:])


def _exit_when_orphaned() -> None:
    parent = os.getppid()
    while True:
        time.sleep(_ORPHAN_CHECK_S)
        if os.getppid() != parent:  # the parent died: a hung call must not outlive it
            os._exit(1)


def _limit_memory(extra_mb: int) -> None:
    """Cap this process's address space at what it uses now plus ``extra_mb``: a reward that
    executes model output (code tasks) cannot take the machine's memory; it gets MemoryError."""
    if extra_mb <= 0:
        return
    import resource

    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = used + extra_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _child_main(fd: int, memory_limit_mb: int = 0) -> None:
    conn = Connection(fd)
    threading.Thread(target=_exit_when_orphaned, daemon=True).start()
    try:
        fn = pickle.loads(conn.recv_bytes())
        warmup = getattr(fn, "warmup", None)
        if callable(warmup):
            warmup()
        _limit_memory(memory_limit_mb)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent verbatim
        conn.send(("fatal", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            chunk = conn.recv()
        except EOFError:
            return
        for idx, response, answer, prompt, columns in chunk:
            start = time.perf_counter()
            try:
                value, problem = _check_value(fn(response, answer, prompt, **columns))
            except BaseException as exc:  # noqa: BLE001 - SystemExit from a reward fn is a sample error too
                value, problem = None, _describe(exc)
            conn.send(("result", idx, value, problem, time.perf_counter() - start))


# ----------------------------------------------------------------------------- parent side
class _Worker:
    def __init__(self, payload: bytes, memory_limit_mb: int = 0) -> None:
        parent_sock, child_sock = socket.socketpair()
        fd = child_sock.fileno()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_CODE, json.dumps([p for p in sys.path if isinstance(p, str)]), str(fd),
             str(memory_limit_mb)],
            pass_fds=(fd,),
            start_new_session=True,  # own process group: a kill also stops the fn's subprocesses
        )
        child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.conn.send_bytes(payload)
        self.started = time.monotonic()
        self.ready = False
        self.inflight: Deque[int] = deque()
        self.deadline: Optional[float] = None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.conn.close()


class RewardRunner:
    """A persistent pool of ``num_workers`` processes scoring with ``fn`` (a callable that pickles
    by reference, or a spec for ``resolve_reward``); each call may take at most ``timeout_s``.

    Use as a context manager or call ``close()``; workers also exit when this process dies.
    """

    def __init__(
        self,
        fn: Union[RewardFn, str],
        timeout_s: float,
        num_workers: int = 1,
        startup_timeout_s: float = 120.0,
        memory_limit_mb: int = 0,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"reward.timeout_s must be > 0, got {timeout_s}")
        if num_workers < 1:
            raise ValueError(f"reward.num_workers must be >= 1, got {num_workers}")
        if isinstance(fn, str):
            fn = resolve_reward(fn)
        if getattr(fn, "__module__", None) == "__main__":
            raise ValueError(
                f"reward function {getattr(fn, '__qualname__', fn)!r} is defined in __main__, which worker "
                "processes cannot import; move it into a module and use 'module:function'"
            )
        try:
            self._payload = pickle.dumps(fn)
        except Exception as exc:
            raise ValueError(
                f"reward function {fn!r} cannot be sent to a worker process ({type(exc).__name__}: {exc}); "
                "define it at the top level of an importable module and use 'module:function'"
            ) from None
        self.fn_name = getattr(fn, "__qualname__", repr(fn))
        self.columns = accepted_columns(fn)  # the data columns it takes as keywords (None: all)
        # The outcome needs torch; import it now (seconds, once) so no score() call pays for it.
        import torch  # noqa: F401

        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self.restarts = 0  # workers replaced after a timeout or crash
        self.memory_limit_mb = int(memory_limit_mb)
        self._workers: List[_Worker] = [_Worker(self._payload, self.memory_limit_mb) for _ in range(num_workers)]

    # -- lifecycle
    def __enter__(self) -> "RewardRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        workers, self._workers = self._workers, []
        for w in workers:
            w.kill()  # workers hold no state worth a graceful exit

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass

    def wait_ready(self) -> None:
        """Block until every worker has loaded the function; raises ``RewardSetupError``."""
        while not all(w.ready for w in self._workers):
            self._pump()

    # -- scoring
    def score(self, calls: Sequence[RewardCall]) -> RewardOutcome:
        """Score ``calls`` = [(response, answer, prompt[, columns]), ...]; see ``RewardOutcome``."""
        for i, call in enumerate(calls):
            if len(call) not in (3, 4) or not isinstance(call[0], str) or not isinstance(call[2], str) or not (
                call[1] is None or isinstance(call[1], str)
            ) or (len(call) == 4 and not isinstance(call[3], (dict, type(None)))):
                raise TypeError(f"reward call {i} must be (response: str, answer: str | None, prompt: str"
                                f"[, columns: dict]), got {tuple(type(c).__name__ for c in call)}")
        if not self._workers:
            raise RuntimeError("RewardRunner is closed")
        n = len(calls)
        self._calls = calls
        self._values: List[float] = [math.nan] * n
        self._valid: List[bool] = [False] * n
        self._failures: Dict[int, RewardFailure] = {}
        self._call_seconds: List[float] = []
        size = max(1, math.ceil(n / (len(self._workers) * _CHUNKS_PER_WORKER)))
        self._pending: Deque[List[int]] = deque(list(range(s, min(s + size, n))) for s in range(0, n, size))
        self._done = 0
        start = time.monotonic()
        while self._done < n:
            self._dispatch()
            self._pump()
        return self._outcome(time.monotonic() - start)

    def _dispatch(self) -> None:
        for w in self._workers:
            if w.ready and not w.inflight and self._pending:
                chunk = self._pending.popleft()
                w.inflight.extend(chunk)
                w.conn.send([self._message(i) for i in chunk])
                w.deadline = time.monotonic() + self.timeout_s

    def _message(self, i: int) -> Tuple[Any, ...]:
        """(index, response, answer, prompt, the columns this function takes) of call ``i``."""
        call = self._calls[i]
        return (i, *call[:3], select_columns(self.columns, call[3] if len(call) > 3 else None))

    def _pump(self) -> None:
        """Wait for one round of messages, then enforce deadlines."""
        now = time.monotonic()
        deadlines = [w.deadline for w in self._workers if w.inflight and w.deadline is not None]
        deadlines += [w.started + self.startup_timeout_s for w in self._workers if not w.ready]
        wait_s = max(0.0, min(deadlines) - now) if deadlines else None
        conns = {w.conn: w for w in self._workers}
        for conn in wait(list(conns), timeout=wait_s):
            w = conns[conn]
            try:
                while True:
                    self._handle(w, conn.recv())
                    if not conn.poll():
                        break
            except (EOFError, OSError):
                self._replace(w, "crash", f"worker process died (exit code {w.proc.wait()})")
        now = time.monotonic()
        for w in list(self._workers):
            if w.inflight and w.deadline is not None and now >= w.deadline:
                self._replace(w, "timeout", f"reward call exceeded reward.timeout_s={self.timeout_s:g}s; "
                                            "its worker process was killed")
            elif not w.ready and now - w.started >= self.startup_timeout_s:
                self.close()
                raise RewardSetupError(
                    f"reward worker for {self.fn_name} did not start within {self.startup_timeout_s:g}s"
                )

    def _handle(self, w: _Worker, msg: Tuple[Any, ...]) -> None:
        tag = msg[0]
        if tag == "ready":
            w.ready = True
        elif tag == "fatal":
            self.close()
            raise RewardSetupError(f"reward function {self.fn_name} could not be loaded in a worker:\n{msg[1]}")
        else:
            _, idx, value, problem, seconds = msg
            if not w.inflight or w.inflight[0] != idx:
                raise RuntimeError(f"reward worker protocol error: got result {idx}, expected {list(w.inflight)[:1]}")
            w.inflight.popleft()
            w.deadline = time.monotonic() + self.timeout_s
            self._call_seconds.append(seconds)
            if problem is None:
                self._values[idx], self._valid[idx] = value, True
            else:
                self._fail(idx, "error", problem)
            self._done += 1

    def _fail(self, idx: int, kind: str, message: str) -> None:
        self._failures[idx] = RewardFailure(
            index=idx, kind=kind, response=self._calls[idx][0][:_MAX_RESPONSE_CHARS], message=message[:_MAX_MESSAGE_CHARS]
        )

    def _replace(self, w: _Worker, kind: str, message: str) -> None:
        """Kill ``w``; its current call fails with ``kind``, the rest of its chunk is requeued."""
        if not w.ready:
            code = w.proc.wait()
            self.close()
            raise RewardSetupError(f"reward worker for {self.fn_name} exited during startup (exit code {code})")
        w.kill()
        if w.inflight:
            self._fail(w.inflight.popleft(), kind, message)
            self._done += 1
            if w.inflight:
                self._pending.appendleft(list(w.inflight))
        self._workers[self._workers.index(w)] = _Worker(self._payload, self.memory_limit_mb)
        self.restarts += 1

    def _outcome(self, seconds: float) -> RewardOutcome:
        import torch  # here, not at the top: worker processes import this module and never need torch

        failures = [self._failures[i] for i in sorted(self._failures)]
        out = RewardOutcome(
            rewards=torch.tensor(self._values, dtype=torch.float32),
            valid=torch.tensor(self._valid, dtype=torch.bool),
            errors=sum(f.kind != "timeout" for f in failures),
            timeouts=sum(f.kind == "timeout" for f in failures),
            failures=failures,
            seconds=seconds,
            call_seconds_mean=sum(self._call_seconds) / len(self._call_seconds) if self._call_seconds else 0.0,
            call_seconds_max=max(self._call_seconds, default=0.0),
        )
        if failures:
            logger.warning("reward %s: %s", self.fn_name, out.summary())
        return out


def score_all(fn: Union[RewardFn, str], rows: Sequence[RewardCall], timeout_s: float, num_workers: int = 1) -> RewardOutcome:
    """One-shot ``RewardRunner(fn, timeout_s, num_workers).score(rows)`` (starts and stops the
    workers: ~0.5 s; keep a ``RewardRunner`` for repeated batches)."""
    with RewardRunner(fn, timeout_s, num_workers) as runner:
        return runner.score(rows)


__all__ = ["RewardCall", "RewardFailure", "RewardOutcome", "RewardRunner", "RewardSetupError", "score_all"]
