"""launch.cluster without starting Ray: which drivers are pinned to loopback, and the actors' environment."""
import os

import pytest

from launch.cluster import _address_host, actor_environment, pin_to_loopback
from rlplat.config.schema import RayConfig

SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@pytest.mark.parametrize("address,host", [("127.0.0.1:6379", "127.0.0.1"), ("ray://localhost:10001", "localhost"),
                                          ("http://127.0.0.1:8265", "127.0.0.1"), ("10.1.2.3:6379", "10.1.2.3"),
                                          ("[::1]:6379", "::1"), ("auto", "auto")])
def test_address_host(address, host):
    assert _address_host(address) == host


@pytest.mark.parametrize("address,pinned", [(None, True), ("127.0.0.1:6379", True), ("10.1.2.3:6379", False)])
def test_a_driver_is_pinned_to_loopback_when_its_cluster_is_on_loopback(monkeypatch, address, pinned):
    monkeypatch.delenv(SWITCH, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    pin_to_loopback(RayConfig(address=address))
    assert (os.environ.get(SWITCH) == "0") is pinned


def test_actor_environment_puts_the_drivers_directory_first_on_the_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = actor_environment("warning")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/elsewhere"]
    assert env["TOKENIZERS_PARALLELISM"] == "false"
