"""benchmarks/ctrl_bon.py: the claims on synthetic values, and the whole benchmark at smoke size
(real runs of the raw-reward and CTRL variants, report files written)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("ctrl_bon", os.path.join(ROOT, "benchmarks", "ctrl_bon.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_claims_compare_the_transformation_with_calibration_and_raw():
    values = {"raw": {"bon@1": [0.55, 0.56, 0.55], "bon@4": [0.50, 0.51, 0.50], "bon@16": [0.5, 0.5, 0.5]},
              "identity": {"bon@1": [0.60, 0.61, 0.60], "bon@4": [0.52, 0.52, 0.53], "bon@16": [0.5, 0.5, 0.5]},
              "bon": {"bon@1": [0.58, 0.58, 0.59], "bon@4": [0.60, 0.61, 0.60], "bon@16": [0.5, 0.5, 0.5]}}
    verdicts = {(tuple(c["algorithms"]), c["measure"]): c["verdict"] for c in bench.claims(values)}
    assert verdicts[(("identity", "raw"), "bon@1")] == "holds"
    assert verdicts[(("bon", "identity"), "bon@4")] == "holds"
    assert verdicts[(("bon", "raw"), "bon@4")] == "holds"
    assert verdicts[(("bon", "identity"), "bon@16")] == "inconclusive at this noise"
    assert bench.claims({"bon": values["bon"]}) == []  # nothing to compare with


@pytest.mark.runtime
def test_ctrl_benchmark_smoke(tmp_path, tiny_models):
    out = tmp_path / "ctrl"
    cmd = [sys.executable, "benchmarks/ctrl_bon.py", "--smoke", "--out", str(out), "--variants", "raw,bon",
           "--set", "rollout.backend=hf", "--set", "trainer.num_ranks=1"]  # the cheapest actors: the smoke checks the harness
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert sorted(result["summary"]) == ["bon", "raw"]
    for variant in result["summary"]:
        for measure in ("bon@1", "bon@4", "won@4"):
            assert 0 <= result["summary"][variant][measure]["mean"] <= 1
        assert result["summary"][variant]["kl"]["mean"] >= 0
    assert {c["verdict"] for c in result["claims"]} == {"not tested: one seed"}
    assert (out / "results.md").read_text().startswith("# InfAlign-CTRL: best-of-N win rates")
    assert (out / "ctrl_bon.png").stat().st_size > 1000
    assert not (out / "runs" / "bon_seed0" / "ctrl_reference.pt").exists()  # a cache, not a result
