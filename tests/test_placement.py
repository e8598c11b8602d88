"""Colocation bundles: a trainer rank and the scorers it hosts share one bundle."""
from pytest import approx

from launch.placement import bundles
from rlplat.config import ResourcesConfig


def test_scorers_share_bundles_round_robin():
    res = ResourcesConfig(trainer_cpus=4, trainer_gpus=0.8, scorer_cpus=2, scorer_gpus=0.2)
    two = bundles(res, 2, 3)
    assert two[0] == approx({"CPU": 8, "GPU": 1.2}) and two[1] == approx({"CPU": 6, "GPU": 1.0})
    four = bundles(res, 4, 1)
    assert four[0] == approx({"CPU": 6, "GPU": 1.0}) and all(b == approx({"CPU": 4, "GPU": 0.8}) for b in four[1:])


def test_cpu_only_bundles_have_no_gpu_key():
    res = ResourcesConfig(trainer_cpus=0.25, scorer_cpus=0.25)
    assert bundles(res, 2, 1) == [{"CPU": 0.5}, {"CPU": 0.25}]
