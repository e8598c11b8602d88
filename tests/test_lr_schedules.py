"""Learning-rate schedules (rlplat.lr_schedules): exact multipliers of each kind, the run's number
of optimizer updates S per algorithm, the optimizer keys' validation and the DeepSpeed passthrough.
The runtime check (a real TrainerGroup stepping and resuming the schedule) is
tests/test_trainer_group.py::test_cosine_warmup_lrs_follow_the_formula_and_resume_exactly."""
import math
import os
import time

import pytest

from rlplat import algorithms, lr_schedules
from rlplat.config import ConfigError, load_config
from rlplat.lr_schedules import LRSchedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(name: str) -> str:
    return os.path.join(ROOT, "configs", f"{name}.yaml")


@pytest.fixture(autouse=True)
def _fresh_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


# ============================================================================ the schedules
def test_registry_holds_the_three_kinds():
    assert lr_schedules.names() == ["constant", "cosine", "linear"]


def test_warmup_is_linear_from_one_over_w_to_one_for_every_kind():
    for kind in lr_schedules.names():
        s = LRSchedule(kind, total=20, warmup=4, floor=0.1)
        assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]  # warmup start .. warmup end
        assert s(4) == 1.0  # the first decay update: progress 0


def test_cosine_values():
    s = LRSchedule("cosine", total=20, warmup=4, floor=0.1)  # decay over updates 4..20 (16 of them)
    assert s(8) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)), abs=1e-15)
    assert s(12) == pytest.approx(0.55, abs=1e-15)  # mid-decay: floor + (1 - floor) / 2
    assert s(19) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 16)), abs=1e-15)  # the last update
    assert s(20) == pytest.approx(0.1, abs=1e-15)  # end: the floor
    assert s(25) == pytest.approx(0.1, abs=1e-15)  # past the planned updates: stays at the floor
    assert LRSchedule("cosine", total=10)(5) == pytest.approx(0.5) and LRSchedule("cosine", total=10)(10) == 0.0


def test_linear_values():
    s = LRSchedule("linear", total=12, warmup=2, floor=0.2)  # decay over updates 2..12 (10)
    assert [s(i) for i in (2, 4, 7, 12, 30)] == pytest.approx([1.0, 0.84, 0.6, 0.2, 0.2], abs=1e-15)
    assert [LRSchedule("linear", total=4)(i) for i in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_constant_values():
    assert [LRSchedule("constant", total=5, warmup=2)(i) for i in range(7)] == [0.5, 1, 1, 1, 1, 1, 1]
    assert LRSchedule()(0) == 1.0  # the default: no schedule


def test_bad_schedules_raise():
    for kwargs in ({"kind": "step"}, {"total": 4, "warmup": 4}, {"warmup": -1}, {"floor": 1.5}):
        with pytest.raises(ValueError):
            LRSchedule(**kwargs)
    with pytest.raises(ValueError, match=">= 0"):
        LRSchedule()(-1)


# ============================================================================ S and W from a config
def test_total_updates_per_algorithm():
    grpo = load_config(config("grpo"), ["trainer.max_steps=7", "algorithm.ppo_epochs=2", "algorithm.mini_batches=3"])
    assert algorithms.get("grpo").total_updates(grpo) == 7 * 2 * 3
    fdpo = load_config(config("fdpo"), ["trainer.max_steps=5", "algorithm.mini_batches=2"])
    assert algorithms.get("fdpo").total_updates(fdpo) == 10
    # Nash-MP: a half and a full proximal step of inner_steps updates each, per step.
    nash = load_config(config("nash_mp"), ["trainer.max_steps=4", "algorithm.nash_mp.inner_steps=3"])
    assert algorithms.get("nash_mp").total_updates(nash) == 4 * 2 * 3
    nash2 = load_config(config("nash_mp"), ["trainer.max_steps=4", "algorithm.nash_mp.inner_steps=3", "algorithm.ppo_epochs=2"])
    assert algorithms.get("nash_mp").total_updates(nash2) == 48
    omd = load_config(config("nash_omd"), ["trainer.max_steps=4", "algorithm.nash_mp.inner_steps=3", "algorithm.ppo_epochs=2"])
    assert algorithms.get("nash_omd").total_updates(omd) == 24  # one proximal step per iteration


def test_schedule_from_config():
    cfg = load_config(config("grpo"), ["trainer.max_steps=50", "trainer.lr_scheduler=cosine",
                                       "trainer.warmup_ratio=0.1", "trainer.min_lr_ratio=0.05"])
    assert lr_schedules.from_config(cfg) == LRSchedule("cosine", total=50, warmup=5, floor=0.05)
    cfg = load_config(config("nash_mp"), ["trainer.lr_scheduler=linear", "trainer.warmup_steps=3"])
    assert lr_schedules.from_config(cfg) == LRSchedule("linear", total=10 * 2 * 2, warmup=3, floor=0.0)
    assert lr_schedules.from_config(load_config(config("grpo"))) == LRSchedule("constant", total=30)  # the default
    ratio = load_config(config("grpo"), ["trainer.max_steps=30", "trainer.warmup_ratio=0.09"])
    assert lr_schedules.from_config(ratio).warmup == 2  # floor(0.09 * 30)


# ============================================================================ validation
MISTAKES = [
    (["trainer.lr_scheduler=step"], ["trainer.lr_scheduler", "step", "cosine"]),
    (["trainer.warmup_steps=2", "trainer.warmup_ratio=0.1"], ["trainer.warmup_steps", "trainer.warmup_ratio", "one of them"]),
    (["trainer.warmup_ratio=1.0"], ["trainer.warmup_ratio", "[0, 1)"]),
    (["trainer.warmup_ratio=-0.1"], ["trainer.warmup_ratio", "[0, 1)"]),
    (["trainer.warmup_steps=-1"], ["trainer.warmup_steps", ">= 0"]),
    (["trainer.max_steps=5", "trainer.warmup_steps=5"], ["trainer.warmup_steps=5", "5 optimizer updates"]),
    (["trainer.lr_scheduler=cosine", "trainer.min_lr_ratio=1.5"], ["trainer.min_lr_ratio", "[0, 1]"]),
    (["trainer.min_lr_ratio=0.1"], ["trainer.min_lr_ratio", "constant"]),
    (["trainer.adam_eps=0"], ["trainer.adam_eps", "> 0"]),
    (["trainer.deepspeed={train_batch_size: 64}"], ["trainer.deepspeed.train_batch_size", "data.prompts_per_step"]),
    (["trainer.deepspeed={gradient_accumulation_steps: 4}"], ["trainer.deepspeed.gradient_accumulation_steps", "algorithm.mini_batches"]),
    (["trainer.deepspeed={zero_optimization: {stage: 3}}"], ["trainer.deepspeed.zero_optimization.stage", "trainer.zero_stage"]),
    (["trainer.deepspeed={zero_optimization: 3}"], ["trainer.deepspeed.zero_optimization", "mapping"]),
    (["trainer.deepspeed={optimizer: {type: Adam, params: {lr: 0.1}}}"], ["trainer.deepspeed.optimizer", "trainer.adam_eps"]),
    (["trainer.deepspeed={scheduler: {type: WarmupLR}}"], ["trainer.deepspeed.scheduler", "trainer.lr_scheduler"]),
    (["trainer.deepspeed={gradient_clipping: 2.0}"], ["trainer.deepspeed.gradient_clipping", "trainer.grad_clip"]),
    (["trainer.deepspeed={bf16: {enabled: true}}"], ["trainer.deepspeed.bf16.enabled", "model.dtype"]),
]


@pytest.mark.parametrize("overrides,fragments", MISTAKES, ids=[" ".join(m[0]) for m in MISTAKES])
def test_optimizer_mistakes_fail_fast_naming_the_key(overrides, fragments):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_config(config("grpo"), overrides)
    assert time.perf_counter() - t0 < 10
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_nash_mp_warmup_is_checked_against_its_updates():
    # 10 steps x 2 proximal steps x 2 inner updates = 40 updates: 39 warmup updates fit, 40 do not.
    load_config(config("nash_mp"), ["trainer.warmup_steps=39"])
    with pytest.raises(ConfigError, match="40 optimizer updates"):
        load_config(config("nash_mp"), ["trainer.warmup_steps=40"])


def test_deepspeed_passthrough_merges_engine_settings(tmp_path):
    from actors.trainer.ds_config import build_ds_config

    yaml_path = tmp_path / "offload.yaml"
    yaml_path.write_text("trainer:\n  deepspeed:\n    zero_optimization:\n      offload_optimizer: {device: cpu}\n"
                         "      overlap_comm: false\n    fp16: {initial_scale_power: 8}\n")
    assert load_config(config("grpo"), ["trainer.deepspeed={wall_clock_breakdown: true}"]).trainer.deepspeed == {
        "wall_clock_breakdown": True}
    passthrough = load_config(str(yaml_path)).trainer.deepspeed
    assert isinstance(passthrough, dict)  # a plain dict: it travels to the trainer ranks as is
    ds = build_ds_config(2, "float32", 2, 1.0, passthrough)
    assert ds["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu"}, "overlap_comm": False}
    assert ds["fp16"] == {"enabled": False, "initial_scale_power": 8} and ds["gradient_accumulation_steps"] == 1
    with pytest.raises(ValueError, match="trainer.deepspeed.scheduler"):
        build_ds_config(2, "float32", 2, 1.0, {"scheduler": {"type": "WarmupLR"}})
