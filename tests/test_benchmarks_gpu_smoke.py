"""benchmarks/gpu_smoke.py without a GPU: the dry run (model config, command, ``launch.train
--check``), the model's size, the one-GPU resource split, and the real run refusing up front."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("gpu_smoke", os.path.join(ROOT, "benchmarks", "gpu_smoke.py"))
gs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gs)


def _has_key(key):
    return not gs.unknown_keys([f"{key}=x"])


def test_dry_run_prints_the_command_and_passes_check():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_smoke.py", "--dry-run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    out = proc.stdout
    assert "launch.train --check: ok" in out and "python -m launch.train --config configs/grpo.yaml" in out
    for item in ("rollout.weight_sync=collective", "trainer.zero_stage=2", "trainer.num_ranks=1", "rollout.backend=vllm",
                 "model.dtype=bfloat16", "rollout.ignore_eos=true", "trainer.max_steps=6"):
        assert f"  {item}\n" in out, item
    skipped = "rollout.weight_sync is not in this checkout's config schema; left out of the check" in out
    assert skipped == (not _has_key("rollout.weight_sync"))
    assert "0.504B parameters" in out


def test_model_is_about_half_a_billion_parameters_and_the_gpu_is_shared_by_fractions():
    n = gs.count_parameters(gs.model_config())
    assert 0.45e9 < n < 0.55e9
    items = dict(o.split("=", 1) for o in gs.overrides(gs.parse_args([]), "m", "r"))
    gpus = [float(items[f"resources.{role}_gpus"]) for role in ("trainer", "rollout", "scorer")]
    assert all(g > 0 for g in gpus) and sum(gpus) <= 1.0
    assert float(items["rollout.gpu_memory_utilization"]) <= 0.5
    assert int(items["data.prompts_per_step"]) * int(items["algorithm.group_size"]) <= int(items["rollout.max_num_seqs"])


def test_unknown_keys_names_keys_the_schema_lacks():
    assert gs.unknown_keys(["rollout.no_such_key=1", "trainer.max_steps=3", "nope=2",
                            "algorithm.divergences.0.coef.value=0.1"]) == ["rollout.no_such_key", "nope"]


def test_real_run_without_a_gpu_refuses_before_building_the_model(tmp_path, capsys):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the real run would start")
    assert gs.main(["--out", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device is visible" in err
    assert not (tmp_path / "work" / "model").exists()  # nothing was built
