"""InfAlign-CTRL end to end through the real CLI (``configs/ctrl_bon.yaml``): real Ray, DeepSpeed
ranks, reference scorer and vLLM engine. The reference rewards are drawn once, stored and reused by a
later run under the same fingerprint; rewards are calibrated (about Uniform[0, 1] while the policy is
still pi_ref) and transformed; held-out evaluation reports best/worst-of-N win rates against the
initial policy."""
import json
import math
import os

import pytest
import torch

from tests.test_resume import train_cli

pytestmark = pytest.mark.runtime
SMALL = ["data.prompts_per_step=8", "data.builtin_train_size=16", "data.builtin_eval_size=8", "trainer.num_ranks=2",
         "trainer.micro_batch_tokens=256", "rollout.cpu_kv_cache_gb=0.05", "trainer.eval_max_prompts=8",
         "trainer.eval_n=4", "trainer.eval_ks=[1,4]", "trainer.eval_win_ns=[1,4]"]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_ctrl_bon_calibrates_transforms_and_reuses_its_store(tmp_path, tiny_models):
    first, second = tmp_path / "first", tmp_path / "second"
    code, log = train_cli("ctrl_bon", f"trainer.output_dir={first}", *SMALL, "trainer.max_steps=3", "trainer.eval_every=3")
    assert code == 0, log[-5000:]
    store = torch.load(first / "ctrl_reference.pt", weights_only=False)
    assert store["rewards"].shape == (16, 16) and store["fingerprint"]["m"] == 16
    assert bool(((store["rewards"] >= 0) & (store["rewards"] <= 1)).all())
    assert len(torch.unique(store["rewards"])) > 2  # the graded reward has spread
    rows = metrics(first)
    assert [r["step"] for r in rows] == [-1, 0, 1, 2]
    for r in rows[1:]:
        assert r["reward/raw_mean"] == pytest.approx(r["reward/mean"])
        assert 0 <= r["reward/calibrated_mean"] <= 1
        assert 1 <= r["reward/transformed_mean"] <= math.exp(10.0)
        assert "div/kl_ref" in r
    # Step 0 samples pi_0 = pi_ref: its calibrated rewards are about Uniform[0, 1] (64 samples).
    assert rows[1]["reward/calibrated_mean"] == pytest.approx(0.5, abs=0.15)
    assert "eval/bon@4_win_rate" not in rows[0]  # the initial evaluation is the baseline
    for key in ("eval/bon@1_win_rate", "eval/bon@4_win_rate", "eval/won@1_win_rate", "eval/won@4_win_rate"):
        assert 0 <= rows[-1][key] <= 1

    mtime = os.path.getmtime(first / "ctrl_reference.pt")
    code, log = train_cli("ctrl_bon", f"trainer.output_dir={second}", *SMALL, "trainer.max_steps=1", "trainer.eval_every=0",
                          "trainer.eval_win_ns=[]", f"algorithm.ctrl.store_path={first / 'ctrl_reference.pt'}")
    assert code == 0, log[-5000:]
    assert "preparing it again" not in log and os.path.getmtime(first / "ctrl_reference.pt") == mtime
    assert metrics(second)[0]["ctrl/prepare_seconds"] < rows[1]["ctrl/prepare_seconds"]

