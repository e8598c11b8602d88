"""Per-step time split of a real training run and the controller's own overhead.

    python benchmarks/step_breakdown.py --config configs/grpo.yaml [key=value ...]

Runs ``python -m launch.train`` with the given config and overrides in a fresh run directory,
then prints, for every step, the seconds spent in generate / score / reward / train / sync,
"other" (the controller's orchestration: everything not inside a phase), tokens per second,
and the mean share of "other" (target: under 5% of step time). Step 0 includes warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

PHASES = ("generate", "score", "reward", "train", "sync", "other")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/grpo.yaml")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    out = tempfile.mkdtemp(prefix="rlplat-breakdown-")
    cmd = [sys.executable, "-m", "launch.train", "--config", args.config, f"trainer.output_dir={out}", *args.overrides]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-6000:], sep="\n", file=sys.stderr)
        return proc.returncode
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    print("command:", " ".join(cmd))
    print(f"{'step':>4} " + " ".join(f"{ph:>9}" for ph in PHASES) + f" {'step_s':>8} {'tok/s':>8} {'other%':>7}")
    shares = []
    for r in rows:
        split = [r.get(f"time/{ph}", 0.0) for ph in PHASES]
        share = 100 * r["time/other"] / r["time/step"]
        shares.append(share)
        print(f"{r['step']:>4} " + " ".join(f"{s:>9.3f}" for s in split)
              + f" {r['time/step']:>8.3f} {r['throughput/tokens_per_s']:>8.0f} {share:>6.2f}%")
    steady = shares[1:] or shares
    print(f"orchestration overhead ('other'): mean {sum(steady) / len(steady):.2f}% of step time over steps >= 1 "
          f"(target < 5%); mean tokens/s {sum(r['throughput/tokens_per_s'] for r in rows[1:] or rows) / len(rows[1:] or rows):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
