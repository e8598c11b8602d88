"""Placement: a trainer rank and the scorers it hosts share one colocated bundle, and a run whose
actors the cluster cannot hold is refused (embedded) or warned about (joined) before it waits."""
import glob

import pytest
from pytest import approx

from launch.placement import Demand, bundles, check_fits, demands, shortfalls
from rlplat import algorithms
from rlplat.config import ConfigError, ResourcesConfig, load_config
from tests.conftest import own_cluster_env


def test_scorers_share_bundles_round_robin():
    res = ResourcesConfig(trainer_cpus=4, trainer_gpus=0.8, scorer_cpus=2, scorer_gpus=0.2)
    two = bundles(res, 2, 3)
    assert two[0] == approx({"CPU": 8, "GPU": 1.2}) and two[1] == approx({"CPU": 6, "GPU": 1.0})
    four = bundles(res, 4, 1)
    assert four[0] == approx({"CPU": 6, "GPU": 1.0}) and all(b == approx({"CPU": 4, "GPU": 0.8}) for b in four[1:])


def test_cpu_only_bundles_have_no_gpu_key():
    res = ResourcesConfig(trainer_cpus=0.25, scorer_cpus=0.25)
    assert bundles(res, 2, 1) == [{"CPU": 0.5}, {"CPU": 0.25}]


def _run(config: str, *overrides: str):
    cfg = load_config(f"configs/{config}.yaml", overrides)
    return cfg, algorithms.get(cfg.algorithm.name).plan(cfg)


def test_the_demands_count_every_actor_a_run_starts():
    cfg, plan = _run("kdrl", "trainer.num_ranks=3", "rollout.num_engines=2", "roles.teacher.num_actors=2")
    got = {d.what: (d.count, d.each) for d in demands(cfg, plan)}
    res = cfg.resources
    assert got["rollout engine"] == (2, {"CPU": res.rollout_cpus})
    assert got["trainer rank"] == (3, {"CPU": res.trainer_cpus})
    assert got["scorer"][0] == 2 + len(plan.scorer_roles - {"teacher"})  # two teachers, one of every other role
    assert got["reward worker"] == (1, {"CPU": res.reward_cpus})
    colocated = demands(*_run("kdrl", "resources.colocate=true", "trainer.num_ranks=2"))
    assert [d.each for d in colocated if d.what.startswith("colocated")] == bundles(
        res, 2, len(plan.scorer_roles))


def test_an_actor_no_node_can_hold_and_a_sum_over_the_cluster_are_named():
    wanted = [Demand("rollout engine", "resources.rollout_cpus", 1, {"CPU": 3.0}),
              Demand("trainer rank", "resources.trainer_cpus", 2, {"CPU": 0.25, "GPU": 0.5})]
    two_cpus = [{"CPU": 2.0, "memory": 1e9}]
    problems = shortfalls(wanted, two_cpus)
    assert any("one rollout engine asks for 3 CPU (resources.rollout_cpus)" in p and "the largest: 2 CPU" in p
               for p in problems)
    assert any(p.startswith("one trainer rank asks for") and "0 GPU" in p for p in problems)
    assert any("3.5 CPU in all" in p and "the cluster has 2" in p for p in problems)
    assert any("1 GPU in all" in p for p in problems)
    # Two nodes: each actor fits one of them and the sums fit the cluster.
    assert shortfalls(wanted, [{"CPU": 3.0}, {"CPU": 1.0, "GPU": 1.0}]) == []
    # Fractions that add up exactly are not refused.
    assert shortfalls([Demand("scorer", "k", 3, {"CPU": 1 / 3})], [{"CPU": 1.0}]) == []


def test_every_shipped_config_for_the_built_in_models_fits_two_cores():
    small = [p for p in sorted(glob.glob("configs/*.yaml"))
             if load_config(p, validate=False).model.path.startswith("builtin:")]
    assert len(small) >= 8
    for path in small:
        cfg = load_config(path)
        assert shortfalls(demands(cfg, algorithms.get(cfg.algorithm.name).plan(cfg)), [{"CPU": 2.0}]) == [], path


def test_the_embedded_cluster_refuses_what_it_cannot_place_and_a_joined_one_warns(capsys):
    # No Ray in this process: with a local cluster left up from here, tests/test_ray_job.py's head
    # answered "No available agent to submit job" for 150 s (CI). The CLI test below runs Ray.
    cfg, plan = _run("grpo", "resources.rollout_cpus=3")
    two_cpus = [{"CPU": 2.0, "memory": 1e9, "node:127.0.0.1": 1.0}]  # as ray.nodes() reports a node
    with pytest.raises(ConfigError, match=r"one rollout engine asks for 3 CPU .*ray\.num_cpus"):
        check_fits(cfg, plan, two_cpus, joined=False)
    check_fits(cfg, plan, two_cpus, joined=True)
    assert "rlplat: warning: one rollout engine asks for 3 CPU" in capsys.readouterr().out
    check_fits(*_run("grpo"), two_cpus, joined=False)  # the default fits


@pytest.mark.runtime  # an embedded Ray of its own (own_cluster_env): the refusal is the embedded cluster's
def test_the_cli_stops_with_a_config_error_instead_of_waiting(tiny_models, tmp_path):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = own_cluster_env()
    proc = subprocess.run([sys.executable, "-m", "launch.train", "--config", os.path.join(root, "configs", "grpo.yaml"),
                           "ray.num_cpus=2", "ray.include_dashboard=false", "resources.rollout_cpus=3",
                           f"trainer.output_dir={tmp_path / 'run'}"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "rlplat: config error: one rollout engine asks for 3 CPU (resources.rollout_cpus" in proc.stderr
