"""Sampling seed streams (rlplat.seeds, StepContext.step_seed): one disjoint stream per (step, phase)."""
from types import SimpleNamespace

import pytest
import torch

from launch.context import StepContext
from rlplat import seeds
from rlplat.config import ConfigError, RunConfig
from rlplat.config.validate import validate_config

BATCH = 8192  # samples one draw takes: prompts_per_step * group_size, above the old 7919-wide spacing


def _controller(run_seed: int):
    """Just what ``StepContext.step_seed`` reads."""
    cfg = RunConfig()
    cfg.trainer.seed = run_seed
    return SimpleNamespace(cfg=cfg)


def _draws(run_seed: int, steps):
    """(seed, who) of every draw of a run: per-step rollouts and opponents, the DPH split, evaluation."""
    ctrl = _controller(run_seed)
    out = [(StepContext.step_seed(ctrl, s, phase), (s, phase)) for s in steps for phase in ("rollout", "opponents")]
    return out + [(StepContext.step_seed(ctrl, 0, phase), (0, phase)) for phase in ("prepare", "eval")]


@pytest.mark.parametrize("run_seed", [0, 1, 42, 2**40 + 3])
def test_streams_of_steps_and_phases_are_disjoint(run_seed):
    # The engines seed sample n of a draw with seed + n (vLLM child j: seed + j), and torch's CPU
    # generator reads a seed mod 2**32: each draw owns the seeds up to the next one mod 2**32,
    # at least its stream's size (>= BATCH).
    draws = sorted(_draws(run_seed, range(seeds.MAX_STEPS)))  # every step a run may have
    assert all(0 <= s < 2**32 for s, _ in draws)
    gaps = [(b - a, wa, wb) for (a, wa), (b, wb) in zip(draws, draws[1:] + draws[:1])]
    gaps[-1] = (gaps[-1][0] + 2**32, *gaps[-1][1:])  # the wrap-around from the largest seed to the smallest
    for gap, who_a, who_b in gaps:
        assert gap >= max(BATCH, seeds.samples_per_stream(seeds.PHASES[who_a[1]])), f"{who_a} and {who_b} share seeds"


def test_stream_seed_is_deterministic_and_depends_on_every_input():
    s = seeds.stream_seed(7, 3, seeds.ROLLOUT)
    assert s == seeds.stream_seed(7, 3, seeds.ROLLOUT)
    others = {seeds.stream_seed(8, 3, seeds.ROLLOUT), seeds.stream_seed(7, 4, seeds.ROLLOUT),
              seeds.stream_seed(7, 3, seeds.OPPONENTS), seeds.stream_seed(7, 3, seeds.ROLLOUT, offset=5)}
    assert s not in others and len(others) == 4
    assert seeds.stream_seed(7, 0, seeds.PREPARE, offset=100) == (seeds.stream_seed(7, 0, seeds.PREPARE) + 100) % 2**32
    # Adjacent run seeds start far apart (the run seed is hashed, not added).
    assert abs(seeds.stream_seed(1, 0, seeds.ROLLOUT) - seeds.stream_seed(0, 0, seeds.ROLLOUT)) > 2**24


def test_torch_cpu_generator_reads_only_the_low_32_bits_of_a_seed():
    """Why rlplat.seeds stays in [0, 2**32): seeds differing only above bit 31 sample the same on CPU."""
    draws = [torch.rand(4, generator=torch.Generator().manual_seed(s)) for s in (5, 5 + 2**32, 5 + 2**40, 6)]
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])
    assert not torch.equal(draws[0], draws[3])


def test_out_of_range_draws_are_refused():
    with pytest.raises(ValueError, match="step -1"):
        seeds.stream_seed(0, -1, seeds.ROLLOUT)
    with pytest.raises(ValueError, match=f"step {seeds.MAX_STEPS} "):
        seeds.stream_seed(0, seeds.MAX_STEPS, seeds.OPPONENTS)
    with pytest.raises(ValueError, match="drawn once per run"):
        seeds.stream_seed(0, 1, seeds.EVAL)
    with pytest.raises(ValueError, match="unknown sampling phase 9"):
        seeds.stream_seed(0, 0, 9)
    with pytest.raises(ValueError, match="sample offset 65536"):
        seeds.stream_seed(0, 0, seeds.ROLLOUT, offset=seeds.STEP_SAMPLES)
    seeds.stream_seed(0, 0, seeds.PREPARE, offset=2**24 - 1)
    with pytest.raises(KeyError, match="unknown sampling phase 'opponent'"):
        StepContext.step_seed(_controller(0), 0, "opponent")
    with pytest.raises(ValueError, match="DPH-RL = 16777217 samples"):
        seeds.check_draw_size(2**24 + 1, seeds.PREPARE, "DPH-RL")
    seeds.check_draw_size(2**24, seeds.PREPARE, "DPH-RL")


def test_validation_refuses_configs_beyond_the_streams(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig()
    validate_config(cfg)
    cfg.trainer.max_steps = seeds.MAX_STEPS + 1
    with pytest.raises(ConfigError, match=rf"trainer.max_steps={seeds.MAX_STEPS + 1} exceeds {seeds.MAX_STEPS}"):
        validate_config(cfg)
    cfg = RunConfig()
    cfg.data.prompts_per_step, cfg.algorithm.group_size = 4097, 16
    with pytest.raises(ConfigError, match=r"data.prompts_per_step \* algorithm.group_size = 65552 samples"):
        validate_config(cfg)
    cfg = RunConfig()
    cfg.trainer.eval_every, cfg.trainer.eval_max_prompts, cfg.trainer.eval_n = 1, 2**20, 2
    cfg.trainer.eval_ks = [1]
    with pytest.raises(ConfigError, match=r"trainer.eval_max_prompts \* trainer.eval_n = 2097152"):
        validate_config(cfg)


def test_eval_seed_fixes_the_evaluation_draws_whatever_the_trainer_seed(tmp_path, monkeypatch):
    def eval_seed(trainer_seed, fixed=None):
        cfg = RunConfig()
        cfg.trainer.seed, cfg.trainer.eval_seed = trainer_seed, fixed
        return StepContext.eval_seed(SimpleNamespace(cfg=cfg))

    assert eval_seed(0) != eval_seed(1)  # default: each trainer seed evaluates on its own draws
    assert eval_seed(0, fixed=7) == eval_seed(1, fixed=7) == eval_seed(7)
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig()
    cfg.trainer.eval_seed = 3
    with pytest.raises(ConfigError, match=r"trainer.eval_seed=3 is set but trainer.eval_every=0"):
        validate_config(cfg)
    cfg.trainer.eval_every, cfg.trainer.eval_seed = 5, -1
    with pytest.raises(ConfigError, match="trainer.eval_seed"):
        validate_config(cfg)
