"""benchmarks/fdpo_divergences.py: the statistics and verdicts on synthetic values (each verdict
both ways), and a runtime smoke run of the whole script (real training runs of 2 steps)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("fdpo_divergences", os.path.join(ROOT, "benchmarks", "fdpo_divergences.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_mean_std_and_standard_error():
    s = bench.mean_std([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(1.0) and s["se"] == pytest.approx(1 / 3 ** 0.5)
    assert bench.mean_std([5.0]) == {"mean": 5.0, "std": 0.0, "se": 0.0, "n": 1}


@pytest.mark.parametrize("a, b, direction, verdict", [
    ([1.0, 1.1, 1.2], [0.0, 0.1, 0.2], +1, "holds"),
    ([1.0, 1.1, 1.2], [0.0, 0.1, 0.2], -1, "does not hold"),
    ([1.0, 1.1, 1.2], [0.0, 0.1, 0.2], 0, "holds"),
    ([0.0, 1.0, 2.0], [0.5, 1.0, 1.5], +1, "inconclusive at this noise"),
    ([1.0], [0.0], +1, "not tested: one seed"),
])
def test_compare_gives_a_verdict_only_beyond_two_standard_errors(a, b, direction, verdict):
    out = bench.compare(a, b, direction)
    assert out["verdict"] == verdict
    assert out["difference"] == pytest.approx(sum(a) / len(a) - sum(b) / len(b))


def test_claims_compare_each_divergence_with_reverse_kl():
    values = {"reverse_kl": {"entropy": [0.1, 0.1, 0.1], "pass@1": [0.9, 0.9, 0.9], "ece": [0.2, 0.21, 0.2]},
              "forward_kl": {"entropy": [0.5, 0.6, 0.5], "pass@1": [0.8, 0.8, 0.81], "ece": [0.2, 0.2, 0.21]}}
    verdicts = {c["measure"]: c["verdict"] for c in bench.claims(values)}
    assert verdicts == {"entropy": "holds", "pass@1": "holds", "ece": "inconclusive at this noise"}


@pytest.mark.runtime
def test_fdpo_benchmark_smoke(tmp_path, tiny_models):
    out = tmp_path / "fdpo"
    cmd = [sys.executable, "benchmarks/fdpo_divergences.py", "--smoke", "--out", str(out), "--divergences",
           "reverse_kl,forward_kl", "--keep-store",
           "--set", "rollout.backend=hf", "--set", "trainer.num_ranks=1"]  # the cheapest actors: the smoke checks the harness
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert sorted(result["summary"]) == ["forward_kl", "reverse_kl"]
    for div in result["summary"]:
        for measure in ("pass@1", "entropy", "ece", "pair_accuracy"):
            assert 0 <= result["summary"][div][measure]["mean"] < 10
    assert {c["verdict"] for c in result["claims"]} == {"not tested: one seed"}
    assert (out / "results.md").read_text().startswith("# f-DPO under four divergences")
    assert (out / "fdpo_divergences.png").stat().st_size > 1000
    assert (out / "runs" / "fdpo_reference.pt").is_file()  # scored once, shared by both runs
