"""Per-step metrics: ``metrics.jsonl`` in the run directory, plus phase timers."""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from typing import Dict, Iterator


class PhaseTimer:
    """Accumulates wall seconds per named phase of one step (generate, score, reward, train, sync)."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def metrics(self) -> Dict[str, float]:
        """time/<phase> for every phase, time/step in total and time/other for the rest (orchestration)."""
        total = time.perf_counter() - self.start
        out = {f"time/{k}": v for k, v in self.seconds.items()}
        out["time/step"] = total
        out["time/other"] = max(total - sum(self.seconds.values()), 0.0)
        return out


class MetricsWriter:
    """Appends one JSON object per step to ``<run_dir>/metrics.jsonl`` (flushed each line)."""

    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self._f = open(self.path, "a", buffering=1)

    def write(self, metrics: Dict[str, float]) -> None:
        self._f.write(json.dumps(metrics, sort_keys=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


# Optional figures of the progress line, in order: (metric, label, format). Absent metrics are left out.
PROGRESS_FIGURES = (
    ("actor/entropy", "entropy", ".3f"),
    ("trainer/grad_norm", "grad_norm", ".3g"),
    ("response/length_mean", "len", ".1f"),
    ("trainer/lr", "lr", ".2e"),
    # multi-turn episodes (rollout.env) only
    ("episode/turns_mean", "turns", ".2f"),
    ("episode/tool_calls_mean", "tool_calls", ".2f"),
    ("episode/tool_errors", "tool_errors", ".0f"),
    ("episode/truncated", "truncated", ".0f"),
)


def progress_line(step: int, max_steps: int, metrics: Dict[str, float], started: float, done_before: int = 0) -> str:
    """One human line for the driver log (the job log in the Ray dashboard): what the run is
    optimising (reward and pass rate, or pair accuracy), each divergence term ``div/<term>``, the
    policy's health (entropy, grad norm, response length, lr), step time and an ETA. Keeps the
    ``step N/M `` prefix that ``benchmarks/step_breakdown.py`` parses. The loss stays in
    ``metrics.jsonl``: with one update per batch its surrogate part is ~0 by construction (ratio 1,
    advantages centred), so the line showed ``loss -0.0000`` and said nothing the terms do not."""
    done = step + 1 - done_before
    elapsed = time.time() - started
    eta = elapsed / max(done, 1) * (max_steps - step - 1)
    if "rewards/accuracy" in metrics:  # preference pairs (f-DPO): implicit-reward accuracy and margin
        parts = [f"pair accuracy {metrics['rewards/accuracy']:.3f} margin {metrics.get('rewards/margin', float('nan')):+.3f}"]
    else:
        parts = [f"reward {metrics.get('reward/mean', float('nan')):.3f} "
                 f"pass {metrics.get('reward/pass_rate', float('nan')):.3f}"]
    parts += [f"{key} {metrics[key]:.3g}" for key in sorted(metrics) if key.startswith("div/")]
    parts += [f"{label} {metrics[key]:{fmt}}" for key, label, fmt in PROGRESS_FIGURES if key in metrics]
    parts.append(f"{metrics.get('time/step', 0):.1f}s/step ETA {eta / 60:.1f} min")
    return f"step {step + 1}/{max_steps} " + " ".join(parts)


def eval_line(step: int, metrics: Dict[str, float]) -> str:
    """One human line for a held-out evaluation (``step`` -1: before training), e.g.
    ``eval after step 10: held-out pass@1 0.820 (greedy 0.938), pass@8 0.953 on 64 prompts x 8``."""
    when = "before training" if step < 0 else f"after step {step + 1}"
    prefix = "eval/pass@"
    ks = sorted(int(key[len(prefix):]) for key in metrics if key.startswith(prefix) and key[len(prefix):].isdigit())
    top = [f"pass@{k} {metrics[prefix + str(k)]:.3f}" for k in ks if k > 1]
    pairs = (f"; held-out pairs accuracy {metrics['eval/pairs_accuracy']:.3f}, ECE {metrics['eval/pairs_ece']:.3f}"
             if "eval/pairs_ece" in metrics else "")
    return (f"eval {when}: held-out pass@1 {metrics['eval/pass@1']:.3f} "
            f"(greedy {metrics.get('eval/pass@1_greedy', float('nan')):.3f})" + "".join(f", {t}" for t in top) +
            f" on {metrics['eval/num_prompts']:.0f} prompts x {metrics['eval/samples_per_prompt']:.0f}" + pairs)


def read_metrics(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(path: str, first_dropped_step: int) -> None:
    """Keep only the rows of steps before ``first_dropped_step`` (atomically)."""
    if not os.path.isfile(path):
        return
    kept = [r for r in read_metrics(path) if r["step"] < first_dropped_step]
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in kept)
    os.replace(path + ".tmp", path)
