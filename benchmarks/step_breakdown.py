"""Per-step time split of a real training run, and the overlap: how busy each actor role was.

    python benchmarks/step_breakdown.py [--config configs/grpo.yaml] [key=value ...]

Runs ``launch.train`` with the config and overrides (in this process, so its embedded Ray cluster
is this process's and outlives the run long enough to be asked what ran), then prints one row per
step with two views of the same seconds:

- phases (the driver's view, ``time/<phase>`` of ``metrics.jsonl``): wall seconds of the step
  (``time/step``) and of its generate / score / reward / train / sync phases, "other" (the
  driver's orchestration: everything outside a phase) and tokens per second;
- busy time per actor role (the actors' view): for rollout engines, scorers (reference, teacher,
  snapshot), trainer ranks and the reward worker, the seconds their actors spent inside an actor
  method during the step, summed over the role's actors, and ``busy/wall`` for each role and in
  total. A role's busy/wall is the mean number of its actors at work; the total is the mean
  number of actors at work at once (above 1.0 when roles overlap, or when several actors of a
  role work side by side, as data-parallel trainer ranks do). ``roles/w`` counts each role once
  (the time at least one of its actors is at work), summed over roles, over wall: above 1.0 only
  when different roles work at the same time, i.e. the overlap of the pipeline.

Also printed: the mean share of "other" (target: under 5% of step time). Step 0 includes warm-up.

Output directory: ``trainer.output_dir=DIR`` among the overrides is honoured (the run, its
``metrics.jsonl``, this script's ``step_breakdown.json`` with every figure and
``step_breakdown.log`` with the run's output all go there); without one, a fresh temporary
directory is used. A relative DIR is relative to the caller's directory.

How busy time is measured. Ray records, for every actor task, when it started RUNNING and when it
FINISHED (or FAILED), on the worker that ran it; these are the task events that
``ray.timeline()`` and the state API read, kept by the GCS (no dashboard needed). A task's
interval is from RUNNING to its end (a trainer rank waiting in a collective inside its method
counts as busy: it holds the rank). Per actor the intervals are merged (an actor that runs two
calls at once is busy once) and clipped to the step's window; roles come from the actor's class
(``ROLE_OF_CLASS``; other classes are shown under their class name). A step's window is
``[end - time/step, end]`` with ``end`` = the run's start + ``time/wall`` (less the step's
evaluation, which runs after it), the run's start on this clock being read off the driver's
progress lines. Workers report task events every 100 ms here
(``RAY_task_events_report_interval_ms``; Ray's default is 1 s), so the last step's events arrive
before the run's actors are killed. Only this run's job is counted when ``RAY_ADDRESS`` makes it
join a shared cluster.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python benchmarks/step_breakdown.py` puts benchmarks/, not the repo root, on the path
    sys.path.insert(0, ROOT)

PHASES = ("generate", "score", "reward", "train", "sync", "other")
ROLES = ("rollout", "scorer", "trainer", "reward")  # always shown, in this order; other roles follow
# Actor class (as Ray names it: the class wrapped by ray.remote) -> role.
ROLE_OF_CLASS = {
    "VLLMRolloutEngine": "rollout", "HFRolloutEngine": "rollout",
    "Scorer": "scorer", "TrainerRank": "trainer", "RewardWorker": "reward", "PreferenceWorker": "preference",
}
_PROGRESS = re.compile(r"^step (\d+)/(\d+) ")  # launch.metrics.progress_line: "step <step+1>/<max_steps> ..."
TASK_EVENTS_INTERVAL_MS = "100"
Interval = Tuple[float, float]  # (start, end), seconds since the epoch


# --------------------------------------------------------------------------- the run
class _TimedLines(io.TextIOBase):
    """A text stream that copies everything to ``sink`` and notes when each progress line arrived."""

    def __init__(self, sink: Any) -> None:
        self.sink, self.buffer_text, self.progress = sink, "", []  # progress: [(time.time(), step)]

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        now = time.time()
        self.sink.write(text)
        self.buffer_text += text
        *lines, self.buffer_text = self.buffer_text.split("\n")
        for line in lines:
            m = _PROGRESS.match(line)
            if m:
                self.progress.append((now, int(m.group(1)) - 1))
        return len(text)

    def flush(self) -> None:
        self.sink.flush()


def output_dir_of(overrides: Sequence[str]) -> Optional[str]:
    """The value of the last ``trainer.output_dir=`` override, None if there is none."""
    values = [o.split("=", 1)[1] for o in overrides if o.startswith("trainer.output_dir=")]
    return values[-1] if values else None


def run_training(config: str, overrides: List[str], log_path: str) -> Tuple[int, List[Tuple[float, int]]]:
    """``launch.train.main`` in this process, its output (and its actors', which Ray forwards to
    this driver) in ``log_path``. Returns (exit status, [(time.time(), step) of each progress line])."""
    os.environ.setdefault("RAY_task_events_report_interval_ms", TASK_EVENTS_INTERVAL_MS)  # read at ray.init
    from launch.train import main as train_main

    with open(log_path, "w", buffering=1) as log:
        stream = _TimedLines(log)
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            try:
                rc = train_main(["--config", config, *overrides])
            except Exception:  # the run's own traceback belongs in its log
                traceback.print_exc()
                rc = 1
            stream.flush()
    return rc, stream.progress


# --------------------------------------------------------------------------- task events
def actor_task_intervals(job_id_hex: Optional[str] = None) -> Dict[str, Tuple[str, List[Interval]]]:
    """actor id -> (actor class, [(RUNNING, FINISHED/FAILED) of each of its task attempts]) of the
    job ``job_id_hex`` (None: every job), from the task events the GCS keeps.

    This reads the accessor ``ray.timeline()`` reads (``ray._private.state``, Ray 2.60): the public
    state API (``ray.util.state.list_tasks``) would need the dashboard running during the run,
    whose process would compete with the run for the cores it measures."""
    from ray._private.state import state
    from ray.core.generated import common_pb2

    running, ends = common_pb2.TaskStatus.Value("RUNNING"), (common_pb2.TaskStatus.Value("FINISHED"),
                                                             common_pb2.TaskStatus.Value("FAILED"))
    actor_kinds = {common_pb2.TaskType.Value("ACTOR_TASK"), common_pb2.TaskType.Value("ACTOR_CREATION_TASK")}
    try:
        events = state._get_all_task_events()
    except AttributeError as exc:
        raise RuntimeError(f"this Ray has no task-event accessor ray._private.state.state._get_all_task_events "
                           f"(written for Ray 2.60): {exc}") from None
    # Events of one task attempt can come in several messages: merge info and timestamps.
    info: Dict[Tuple[bytes, int], Any] = {}
    stamps: Dict[Tuple[bytes, int], Dict[int, int]] = defaultdict(dict)
    for ev in events:
        if job_id_hex is not None and ev.job_id.hex() != job_id_hex:
            continue
        key = (ev.task_id, ev.attempt_number)
        if ev.HasField("task_info"):
            info[key] = ev.task_info
        if ev.HasField("state_updates"):
            stamps[key].update(ev.state_updates.state_ts_ns)
    out: Dict[str, Tuple[str, List[Interval]]] = {}
    for key, ti in info.items():
        ts = stamps.get(key, {})
        end = next((ts[s] for s in ends if s in ts), None)
        if ti.type not in actor_kinds or running not in ts or end is None:
            continue  # plain tasks, the driver, and attempts that never ran or never ended
        cls = ti.func_or_class_name.split(".")[0]
        out.setdefault(ti.actor_id.hex(), (cls, []))[1].append((ts[running] / 1e9, end / 1e9))
    return out


def busy_seconds(intervals: Iterable[Interval], lo: float, hi: float) -> float:
    """Length of the union of ``intervals`` within ``[lo, hi]`` (seconds)."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted((max(a, lo), min(b, hi)) for a, b in intervals):
        if end <= start:
            continue
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


def step_windows(rows: List[Dict[str, Any]], progress: List[Tuple[float, int]]) -> List[Interval]:
    """[start, end] (time.time()) of each step row. The driver prints step k's progress line right
    after writing its row, so ``line time - time/wall`` is the run's start plus that delay; the
    smallest such value over the steps is the start."""
    printed = {step: t for t, step in progress}
    offsets = [printed[r["step"]] - r["time/wall"] for r in rows if r["step"] in printed]
    if not offsets:
        raise RuntimeError("the run printed no progress line ('step k/N ...'): cannot place its steps in time")
    start = min(offsets)
    windows = []
    for r in rows:
        end = start + r["time/wall"] - r.get("eval/seconds", 0.0)  # evaluation runs after the step
        windows.append((end - r["time/step"], end))
    return windows


def role_of(cls: str) -> str:
    return ROLE_OF_CLASS.get(cls, cls)


def busy_by_role(actors: Dict[str, Tuple[str, List[Interval]]], windows: List[Interval]
                 ) -> Tuple[List[Dict[str, float]], List[Dict[str, float]], Dict[str, int]]:
    """Per window: role -> busy seconds summed over the role's actors, and role -> seconds at
    least one of them is busy; and role -> actor count."""
    counts: Dict[str, int] = defaultdict(int)
    by_role: Dict[str, List[Interval]] = defaultdict(list)
    for cls, intervals in actors.values():
        counts[role_of(cls)] += 1
        by_role[role_of(cls)].extend(intervals)
    roles = (*ROLES, *sorted(set(counts) - set(ROLES)))
    busy_steps, active_steps = [], []
    for lo, hi in windows:
        busy: Dict[str, float] = {role: 0.0 for role in roles}
        for cls, intervals in actors.values():
            busy[role_of(cls)] += busy_seconds(intervals, lo, hi)
        busy_steps.append(busy)
        active_steps.append({role: busy_seconds(by_role[role], lo, hi) for role in roles})
    return busy_steps, active_steps, dict(counts)


# --------------------------------------------------------------------------- report
def report_rows(rows: List[Dict[str, Any]], busy: List[Dict[str, float]],
                active: List[Dict[str, float]]) -> List[Dict[str, Any]]:
    out = []
    for r, b, a in zip(rows, busy, active):
        wall = r["time/step"]
        out.append({
            "step": r["step"], "wall_s": wall, "tokens_per_s": r.get("throughput/tokens_per_s", 0.0),
            "phases_s": {ph: r.get(f"time/{ph}", 0.0) for ph in PHASES},
            "busy_s": b, "busy_over_wall": {role: s / wall for role, s in b.items()},
            "total_busy_over_wall": sum(b.values()) / wall,
            "role_active_s": a, "roles_over_wall": sum(a.values()) / wall,
        })
    return out


def format_table(steps: List[Dict[str, Any]], counts: Dict[str, int]) -> str:
    roles = list(steps[0]["busy_s"]) if steps else list(ROLES)
    head = (f"{'step':>4} {'wall':>7} " + " ".join(f"{ph:>8}" for ph in PHASES) + " |"
            + " ".join(f"{f'{r}({counts.get(r, 0)})':>11}" for r in roles) + " |"
            + " ".join(f"{r[:7] + '/w':>9}" for r in roles) + f" {'total/w':>8} {'roles/w':>8} {'tok/s':>7}")
    lines = ["phases: wall seconds of the driver's step; busy: seconds actors of each role (count) spent in actor "
             "methods during the step; /w: busy / wall; roles/w: seconds each role had an actor at work, summed "
             "over roles, / wall (> 1: roles overlap)", head]
    for s in steps:
        lines.append(f"{s['step']:>4} {s['wall_s']:>7.3f} " + " ".join(f"{s['phases_s'][ph]:>8.3f}" for ph in PHASES)
                     + " |" + " ".join(f"{s['busy_s'][r]:>11.3f}" for r in roles)
                     + " |" + " ".join(f"{s['busy_over_wall'][r]:>9.2f}" for r in roles)
                     + f" {s['total_busy_over_wall']:>8.2f} {s['roles_over_wall']:>8.2f} {s['tokens_per_s']:>7.0f}")
    return "\n".join(lines)


def summary(steps: List[Dict[str, Any]]) -> Dict[str, float]:
    steady = steps[1:] or steps  # step 0 carries warm-up
    wall = sum(s["wall_s"] for s in steady)
    return {
        "other_share_mean": sum(s["phases_s"]["other"] / s["wall_s"] for s in steady) / len(steady),
        "tokens_per_s_mean": sum(s["tokens_per_s"] for s in steady) / len(steady),
        "total_busy_over_wall": sum(sum(s["busy_s"].values()) for s in steady) / wall,
        "roles_over_wall": sum(sum(s["role_active_s"].values()) for s in steady) / wall,
        **{f"busy_over_wall/{r}": sum(s["busy_s"][r] for s in steady) / wall for r in steady[0]["busy_s"]},
    }


# --------------------------------------------------------------------------- main
def _resolve_config(path: str) -> str:
    if not os.path.exists(path) and os.path.exists(os.path.join(ROOT, path)):
        path = os.path.join(ROOT, path)
    return os.path.abspath(path)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/grpo.yaml", help="relative to this directory or the repository root")
    p.add_argument("overrides", nargs="*", help="key=value overrides, as for launch.train")
    args = p.parse_args(argv)
    config = _resolve_config(args.config)
    given = output_dir_of(args.overrides)
    out = os.path.abspath(os.path.expanduser(given)) if given else tempfile.mkdtemp(prefix="rlplat-breakdown-")
    # The run's own relative paths (configs, data) and the actors' import path are the repository's.
    overrides = [o for o in args.overrides if not o.startswith("trainer.output_dir=")] + [f"trainer.output_dir={out}"]
    os.makedirs(out, exist_ok=True)
    log_path = os.path.join(out, "step_breakdown.log")
    command = " ".join(["python -m launch.train --config", config, *overrides])
    print(f"step_breakdown: {command}\nstep_breakdown: run directory {out} (log {log_path})", flush=True)
    os.chdir(ROOT)
    rc, progress = run_training(config, overrides, log_path)
    if rc != 0:
        with open(log_path) as f:
            print(f.read()[-8000:], file=sys.stderr)
        print(f"step_breakdown: the run failed (exit {rc}); log {log_path}", file=sys.stderr)
        return rc

    import ray

    from launch.metrics import read_metrics

    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        job_id = ray.get_runtime_context().get_job_id()
        time.sleep(1.0)  # the last events reach the GCS (as ray.timeline() waits)
        actors = actor_task_intervals(job_id)
        ray.shutdown()  # Ray prints the actors' last log lines on the way out: into the log too
    rows = [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["step"] >= 0]  # -1: evaluation only
    # Not the last step: the run kills its actors right after it, and an actor reports its task
    # events about once a second, so the last step's may never reach the GCS (seen in CI, loaded).
    rows = rows[:-1]
    busy, active, counts = busy_by_role(actors, step_windows(rows, progress))
    steps = report_rows(rows, busy, active)
    summ = summary(steps)
    print(format_table(steps, counts))
    print(f"orchestration overhead ('other'): mean {100 * summ['other_share_mean']:.2f}% of step time over steps >= 1 "
          f"(target < 5%); mean tokens/s {summ['tokens_per_s_mean']:.0f}")
    print("busy / wall over steps >= 1: " + ", ".join(
        f"{k.split('/', 1)[1]} {v:.2f}" for k, v in summ.items() if k.startswith("busy_over_wall/"))
          + f"; total {summ['total_busy_over_wall']:.2f}; roles at work at once {summ['roles_over_wall']:.2f} "
          "(above 1.0: roles overlap)")
    with open(os.path.join(out, "step_breakdown.json"), "w") as f:
        json.dump({"command": command, "run_dir": out, "actors": counts, "steps": steps, "summary": summ}, f, indent=2)
    print(f"step_breakdown: figures in {os.path.join(out, 'step_breakdown.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
