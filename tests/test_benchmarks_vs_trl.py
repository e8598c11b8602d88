"""``benchmarks/vs_trl.py --smoke``: TRL's GRPOTrainer and rlplat GRPO both run on the same job and
the report is consistent (positive figures, the ratio is the quotient of the two tokens/s). Unit
tests of the job building (no run): the long-response shape and the default rlplat settings."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("vs_trl", os.path.join(ROOT, "benchmarks", "vs_trl.py"))
vs_trl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vs_trl)


@pytest.fixture
def model_dir(tmp_path):
    """Stands in for the tiny policy's directory: only its config.json is read when building a job."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"max_position_embeddings": 256}))
    return str(tmp_path / "model")


def _job(argv, tmp_path, model_dir):
    args = vs_trl.parse_args(argv)
    overrides = vs_trl.rlplat_overrides(args, str(tmp_path / "run"), model_dir)
    return overrides, vs_trl.build_job(args, overrides, model_dir)


def test_job_with_ignore_eos_and_128_new_tokens(tmp_path, model_dir):
    overrides, job = _job(["--ignore-eos", "--max-new-tokens", "128"], tmp_path, model_dir)
    assert "rollout.ignore_eos=true" in overrides and "rollout.max_new_tokens=128" in overrides
    assert job["rlplat_settings"]["trainer.max_staleness"] == 1  # RLPLAT_SETTINGS' overlap
    assert job["ignore_eos"] is True and job["max_new_tokens"] == 128
    assert job["rlplat_settings"]["rollout.ignore_eos"] is True
    # configs/grpo.yaml: 32 prompt tokens + 128 fit its max_model_len of 256 without an override
    assert not any(o.startswith("rollout.max_model_len") for o in overrides)
    # The default settings come before the user's overrides, which win.
    assert overrides.index(vs_trl.RLPLAT_SETTINGS[0]) < overrides.index(f"trainer.output_dir={tmp_path / 'run'}")
    for setting in vs_trl.RLPLAT_SETTINGS:
        key, value = setting.split("=", 1)
        assert str(job["rlplat_settings"][key]).lower() == value
    kwargs = vs_trl.trl_config_kwargs(job, str(tmp_path / "trl"))
    assert kwargs["max_completion_length"] == 128 and kwargs["generation_kwargs"] == {"min_new_tokens": 128}
    from trl import GRPOConfig  # the installed TRL accepts the arguments

    assert GRPOConfig(**kwargs).generation_kwargs == {"min_new_tokens": 128}
    assert "rollout.ignore_eos=True" in vs_trl.settings_line(job)


def test_job_without_ignore_eos_stops_at_eos_on_both_sides(tmp_path, model_dir):
    overrides, job = _job(["--smoke"], tmp_path, model_dir)
    assert not any(o.startswith("rollout.ignore_eos") for o in overrides) and job["ignore_eos"] is False
    assert "generation_kwargs" not in vs_trl.trl_config_kwargs(job, str(tmp_path / "trl"))


def test_long_responses_raise_max_model_len_up_to_the_model_positions(tmp_path):
    model = tmp_path / "model512"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    overrides, job = _job(["--ignore-eos", "--max-new-tokens", "300"], tmp_path, str(model))
    assert overrides[-1] == "rollout.max_model_len=332"  # configs/grpo.yaml: data.max_prompt_tokens 32
    with pytest.raises(ValueError, match="= 513 exceeds the model's max_position_embeddings \\(512\\)"):
        _job(["--max-new-tokens", "481"], tmp_path, str(model))


def test_max_staleness_option_wins_over_the_default_setting(tmp_path, model_dir):
    overrides, job = _job(["--max-staleness", "0"], tmp_path, model_dir)
    assert overrides.index("trainer.max_staleness=0") > overrides.index("trainer.max_staleness=1")
    assert job["rlplat_settings"]["trainer.max_staleness"] == 0


def test_trl_loads_the_model_in_rlplats_dtype_and_attention(tmp_path, model_dir):
    _, job = _job([], tmp_path, model_dir)
    assert vs_trl.trl_config_kwargs(job, str(tmp_path / "trl"))["model_init_kwargs"] == {"dtype": "float32"}
    _, job = _job(["--rlplat-override", "model.dtype=bfloat16", "--rlplat-override", "model.attn_implementation=eager"],
                  tmp_path, model_dir)
    kwargs = vs_trl.trl_config_kwargs(job, str(tmp_path / "trl"))
    assert kwargs["model_init_kwargs"] == {"dtype": "bfloat16", "attn_implementation": "eager"}
    assert "model.attn_implementation=eager" in vs_trl.settings_line(job)


@pytest.mark.runtime
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
