"""``benchmarks/vs_trl.py --smoke``: TRL's GRPOTrainer and rlplat GRPO both run on the same job and
the report is consistent (positive figures, the ratio is the quotient of the two tokens/s)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.runtime


def test_vs_trl_smoke(tmp_path, tiny_models):
    json_out, md_out = tmp_path / "vs_trl.json", tmp_path / "vs_trl.md"
    # builtin:tiny-policy resolves through RLPLAT_CACHE, which tiny_models set for this session.
    cmd = [sys.executable, "benchmarks/vs_trl.py", "--smoke", "--json-out", str(json_out), "--md-out", str(md_out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (f"{' '.join(cmd)}\n--- stdout\n{proc.stdout[-4000:]}\n"
                                  f"--- stderr\n{proc.stderr[-6000:]}")

    report = json.loads(json_out.read_text())
    job = report["job"]
    assert (job["steps"], job["prompts_per_step"], job["group_size"]) == (3, 2, 4)
    samples = job["prompts_per_step"] * job["group_size"]
    for side in ("trl", "rlplat"):
        s = report[side]
        assert s["s_per_step"] > 0 and s["tokens_per_s"] > 0 and s["completion_tokens_per_s"] > 0, s
        assert s["startup_s"] > 0
        assert s["measured_steps"] == [1, 2]  # step 0 (warm-up) is left out
        assert [st["step"] for st in s["steps"]] == [0, 1, 2]
        for st in s["steps"]:
            assert st["samples"] == samples and st["tokens"] == st["prompt_tokens"] + st["completion_tokens"]
            assert 0 < st["completion_tokens"] <= samples * job["max_new_tokens"]
        measured = s["steps"][1:]
        tokens, seconds = sum(x["tokens"] for x in measured), sum(x["seconds"] for x in measured)
        assert s["tokens_per_s"] == pytest.approx(tokens / seconds)
    # Same prompts, in the same order: every step's prompt tokens agree between the two sides.
    prompt_tokens = {side: [st["prompt_tokens"] for st in report[side]["steps"]] for side in ("trl", "rlplat")}
    assert prompt_tokens["trl"] == prompt_tokens["rlplat"]
    assert all(st["same_prompts_as_rlplat"] for st in report["trl"]["steps"])
    assert report["ratio"] == pytest.approx(report["rlplat"]["tokens_per_s"] / report["trl"]["tokens_per_s"])
    assert report["target_met"] == (report["ratio"] >= report["target_ratio"])
    assert f"{report['ratio']:.2f}x" in proc.stdout and "tokens/s" in proc.stdout
    md = md_out.read_text()
    assert f"{report['ratio']:.2f}x" in md and "trl " in md and "vs_trl.py --smoke" in md
