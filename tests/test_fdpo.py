"""f-DPO end to end through the real CLI (``configs/fdpo.yaml``): real Ray, DeepSpeed ranks,
reference scorer and vLLM engine (held-out evaluation only). A run killed after a step and
resumed with ``trainer.resume=auto`` logs every step once, reuses the stored reference
log-probs and ends where an uninterrupted run ends; a mistyped data key stops the run before
Ray starts, naming the row and the key."""
import json
import subprocess
import sys

import pytest

from tests.test_e2e import ROOT
from tests.test_resume import train_cli

pytestmark = pytest.mark.runtime
SMALL = ["data.prompts_per_step=8", "data.builtin_train_size=16", "data.builtin_eval_size=16", "trainer.num_ranks=2",
         "trainer.micro_batch_tokens=256", "rollout.cpu_kv_cache_gb=0.05", "trainer.max_steps=4", "trainer.save_every=1",
         "trainer.eval_every=2", "trainer.eval_max_prompts=8", "trainer.eval_n=4", "trainer.eval_ks=[1,4]"]
COMPARED = ("loss/fdpo", "rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin", "actor/entropy")


def run(out, *overrides, fault=None):
    return train_cli("fdpo", f"trainer.output_dir={out}", *SMALL, *overrides, fault=fault)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_fdpo_trains_evaluates_and_resumes_exactly(tmp_path, tiny_models):
    ref_dir, crash_dir = tmp_path / "uninterrupted", tmp_path / "crashed"
    code, log = run(ref_dir, "algorithm.fdpo.divergence=js")
    assert code == 0, log[-5000:]
    rows = metrics(ref_dir)
    assert [r["step"] for r in rows] == [-1, 0, 1, 2, 3]
    evals = [r for r in rows if "eval/pass@1" in r]
    assert [r["step"] for r in evals] == [-1, 1, 3]
    for r in evals:
        assert 0 <= r["eval/pairs_ece"] <= 1 and 0 <= r["eval/pairs_accuracy"] <= 1
        assert r["eval/distinct"] >= 1 and r["eval/entropy"] >= 0
    assert evals[0]["eval/pairs_preference_prob"] == pytest.approx(0.5, abs=1e-4)  # pi == pi_ref before training
    # Evaluation sees the trained weights (the engines and the trainer's held-out pass are not stale):
    # at pi_ref every held-out pair ties (accuracy 0), after training some are ranked. (The mean
    # preference probability is no test of this: a mix of right and wrong pairs can leave it at 1/2.)
    assert evals[0]["eval/pairs_accuracy"] == 0 and evals[-1]["eval/pairs_accuracy"] > 0
    for r in rows[1:]:
        assert all(key in r for key in COMPARED + ("time/wall", "throughput/tokens", "data/epoch")), sorted(r)
        assert r["samples"] == 16.0  # 8 pairs, two rows each
    assert rows[-1]["data/epoch"] == pytest.approx(4 * 8 / 16)  # steps 2 and 3 revisit the pairs of 0 and 1
    assert rows[1]["rewards/margin"] == pytest.approx(0.0, abs=1e-5)  # the first update starts at pi_ref
    assert rows[-1]["rewards/margin"] > 0 and rows[-1]["loss/fdpo"] < rows[1]["loss/fdpo"]
    assert (ref_dir / "fdpo_reference.pt").is_file()
    assert (ref_dir / "checkpoints" / "step_000003" / "hf" / "config.json").is_file()
    assert "pair accuracy" in log and "held-out pairs accuracy" in log

    code, log = run(crash_dir, "algorithm.fdpo.divergence=js", fault="after_train:2")
    assert code == 3, log[-5000:]
    assert [r["step"] for r in metrics(crash_dir)] == [-1, 0, 1]
    code, log = run(crash_dir, "algorithm.fdpo.divergence=js", "trainer.resume=auto")
    assert code == 0, log[-5000:]
    assert "continuing at step 3" in log and "preparing it again" not in log  # the store was reused
    resumed, reference = metrics(crash_dir), metrics(ref_dir)
    assert [r["step"] for r in resumed] == [-1, 0, 1, 2, 3]
    for a, b in zip(resumed[1:], reference[1:]):
        for key in COMPARED:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key, a[key], b[key])


def test_fdpo_mistyped_pair_key_stops_before_ray(tmp_path, tiny_models):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "1+2=", "answer": "3", "chosen": " 3", "rejected": " 4"}) + "\n")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "launch.train", "--config", "configs/fdpo.yaml", f"trainer.output_dir={out}",
           f"data.train_path={data}", "data.rejected_key=rejectd", "trainer.eval_every=0", "data.prompts_per_step=1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "row 0 (line 1): missing response key 'rejectd' (data.rejected_key)" in proc.stderr
    assert "Ray cluster" not in proc.stdout and not (out / "metrics.jsonl").exists()
