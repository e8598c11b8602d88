"""Reward functions: built-ins, spec resolution, and the runner's error / timeout accounting."""
from __future__ import annotations

import math
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rlplat.config.errors import ConfigError
from rlplat.config.schema import RewardConfig
from rlplat.rewards import REWARDS, resolve_reward
from rlplat.rewards.runner import RewardRunner, RewardSetupError, score_all

REPO = Path(__file__).resolve().parents[1]

# One module of reward functions for the runner tests, importable by its worker processes.
REWARD_MODULE = textwrap.dedent(
    """
    import math, os, time

    def exact(response, answer, prompt):
        return 1.0 if response == answer else 0.0

    def flaky(response, answer, prompt):
        if response == "boom":
            raise ZeroDivisionError("checker blew up on " + prompt)
        return 0.5

    def hangs(response, answer, prompt):
        if response == "hang":
            with open(answer, "w") as f:  # the test reads the pid to check the process is gone
                f.write(str(os.getpid()))
            time.sleep(60)
        return 1.0

    def bad_values(response, answer, prompt):
        return {"nan": math.nan, "inf": math.inf, "str": "1.0", "bool": True, "int": 1}[response]

    def dies(response, answer, prompt):
        if response == "die":
            os._exit(7)
        return 2.0

    def hungry(response, answer, prompt):
        if response == "eat":
            return float(len(bytearray(int(answer) * 2**20)))  # allocates `answer` MiB
        return 1.0

    NOT_CALLABLE = 3

    def two_args(response, answer):
        return 0.0
    """
)


@pytest.fixture(scope="module")
def reward_module(tmp_path_factory):
    d = tmp_path_factory.mktemp("rewardmod")
    (d / "rl_test_rewards.py").write_text(REWARD_MODULE)
    (d / "rl_test_broken.py").write_text("raise RuntimeError('module-level failure')\n")
    (d / "rl_test_needs_dep.py").write_text("import rl_test_no_such_dependency\n")
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))


# ----------------------------------------------------------------------------- built-ins
def test_builtin_arithmetic():
    fn = resolve_reward("arithmetic")
    assert fn("The answer is 47.", "47", "12+35=") == 1.0
    assert fn("46", "47", "12+35=") == 0.0
    assert fn("", "47", "12+35=") == 0.0


def test_builtin_math_equivalence():
    fn = resolve_reward("math")
    assert fn("so the result is \\boxed{1/2}", "0.5", "") == 1.0
    assert fn("$\\frac{1}{2}$", "1/2", "") == 1.0
    assert fn("\\boxed{1/3}", "0.5", "") == 0.0
    assert fn("no idea", "0.5", "") == 0.0
    with pytest.raises(ValueError, match="needs a gold answer"):
        fn("\\boxed{1}", None, "")


# ----------------------------------------------------------------------------- resolution
def test_builtin_gsm8k_reads_the_number_after_hashes():
    gsm8k = REWARDS.get("gsm8k")
    gold = "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72"
    assert gsm8k("She sold 24 in May, so 48 + 24 = 72 in all.", gold, "q") == 1.0  # the last number
    assert gsm8k("So the answer is 72.", gold, "q") == 1.0  # a sentence's full stop is not a decimal point
    assert gsm8k("#### 72\nCheck: 24 + 48 = 72, not 70", gold, "q") == 1.0  # after ####: the first number
    assert gsm8k("48 + 24 = 71", gold, "q") == 0.0 and gsm8k("no idea", gold, "q") == 0.0
    assert gsm8k("That is 1,234.0 dollars", "#### 1234", "q") == 1.0  # commas, 1234.0 == 1234
    assert gsm8k("-5", "-5", "q") == 1.0  # a bare gold number works too
    with pytest.raises(ValueError, match="no number in the gold answer"):
        gsm8k("72", "seventy-two", "q")


def test_resolve_module_function(reward_module):
    fn = resolve_reward("rl_test_rewards:exact")
    assert fn("a", "a", "p") == 1.0 and fn("a", "b", "p") == 0.0
    assert set(REWARDS.names()) >= {"arithmetic", "math"}


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("nonsense", r"'nonsense' is neither a registered reward \(arithmetic, arithmetic_graded, env, gsm8k, math.*\) nor of the form"),
        ("rl_test_missing_mod:f", r"module 'rl_test_missing_mod' not found"),
        ("rl_test_rewards:nothere", r"module 'rl_test_rewards' has no attribute 'nothere'"),
        ("rl_test_rewards:NOT_CALLABLE", r"'NOT_CALLABLE' is a int, not callable"),
        ("rl_test_rewards:two_args", r"cannot be called as fn\(response, answer, prompt\)"),
        ("rl_test_broken:f", r"importing module 'rl_test_broken' raised RuntimeError: module-level failure"),
        ("rl_test_needs_dep:f", r"needs module 'rl_test_no_such_dependency', which is not installed"),
        ("rl_test_rewards:", r"both parts non-empty"),
    ],
)
def test_bad_specs_name_the_problem(reward_module, spec, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        resolve_reward(spec)
    assert str(err.value).startswith(f"reward.fn='{spec}'") or spec == "nonsense"


# ----------------------------------------------------------------------------- runner
def test_runner_scores_in_order(reward_module):
    calls = [(str(i % 3), "1", "p") for i in range(50)]
    outcome = score_all("rl_test_rewards:exact", calls, timeout_s=5.0, num_workers=2)
    expected = torch.tensor([1.0 if i % 3 == 1 else 0.0 for i in range(50)])
    assert torch.equal(outcome.rewards, expected)
    assert bool(outcome.valid.all()) and outcome.errors == 0 and outcome.timeouts == 0
    assert outcome.failures == []


def test_exception_is_counted_and_recorded(reward_module):
    calls = [("ok", None, "p0"), ("boom", None, "p1"), ("ok", None, "p2"), ("boom", None, "p3")]
    outcome = score_all("rl_test_rewards:flaky", calls, timeout_s=5.0)
    assert outcome.valid.tolist() == [True, False, True, False]
    assert outcome.rewards[0].item() == 0.5 and math.isnan(outcome.rewards[1].item())
    assert (outcome.errors, outcome.timeouts) == (2, 0)
    first = outcome.failures[0]
    assert (first.index, first.kind, first.response) == (1, "error", "boom")
    assert "ZeroDivisionError: checker blew up on p1" in first.message
    assert "rl_test_rewards.py" in first.message and "in flaky" in first.message  # the user's frame
    assert outcome.metrics()["reward/invalid_frac"] == 0.5
    assert "2 of 4 rewards failed" in outcome.summary()


def test_non_float_and_nan_returns_are_errors(reward_module):
    responses = ["nan", "inf", "str", "bool", "int"]
    outcome = score_all("rl_test_rewards:bad_values", [(r, None, "") for r in responses], timeout_s=5.0)
    assert outcome.valid.tolist() == [False, False, False, False, True]
    assert outcome.rewards[4].item() == 1.0  # an int is a number
    assert outcome.errors == 4
    assert "returned nan" in outcome.failures[0].message
    assert "returned str" in outcome.failures[2].message


def test_hung_call_times_out_and_its_process_is_killed(reward_module, tmp_path):
    pid_file = str(tmp_path / "pid")
    calls = [("a", pid_file, ""), ("hang", pid_file, ""), ("b", pid_file, ""), ("c", pid_file, "")]
    with RewardRunner("rl_test_rewards:hangs", timeout_s=0.5, num_workers=1) as runner:
        runner.wait_ready()
        start = time.monotonic()
        outcome = runner.score(calls)
        elapsed = time.monotonic() - start
        assert runner.restarts == 1
        # The pool still works after the restart.
        assert bool(runner.score([("x", pid_file, "")]).valid.all())
    # timeout + the replacement worker's start (the calls after the hung one run there).
    assert 0.5 <= elapsed < 0.5 + 4.0, elapsed
    assert outcome.valid.tolist() == [True, False, True, True]
    assert (outcome.errors, outcome.timeouts) == (0, 1)
    assert outcome.failures[0].kind == "timeout" and outcome.failures[0].index == 1
    with pytest.raises(ProcessLookupError):
        os.kill(int(Path(pid_file).read_text()), 0)


def test_crashed_worker_is_an_error_and_replaced(reward_module):
    outcome = score_all("rl_test_rewards:dies", [("a", None, ""), ("die", None, ""), ("b", None, "")], 5.0)
    assert outcome.valid.tolist() == [True, False, True]
    assert outcome.failures[0].kind == "crash" and "exit code 7" in outcome.failures[0].message
    assert outcome.errors == 1


def test_group_valid_drops_whole_groups(reward_module):
    outcome = score_all("rl_test_rewards:flaky", [("ok", None, ""), ("boom", None, ""), ("ok", None, ""),
                                                  ("ok", None, "")], 5.0)
    group_ids = torch.tensor([0, 0, 1, 1])
    assert outcome.group_valid(group_ids).tolist() == [False, False, True, True]


def test_unpicklable_function_is_rejected_up_front():
    with pytest.raises(ValueError, match="cannot be sent to a worker process"):
        RewardRunner(lambda r, a, p: 0.0, timeout_s=1.0)


def test_function_defined_in_main_is_rejected_up_front():
    def reward(response, answer, prompt):
        return 0.0

    reward.__module__ = "__main__"
    with pytest.raises(ValueError, match="defined in __main__"):
        RewardRunner(reward, timeout_s=1.0)


def test_function_workers_cannot_import_is_a_setup_error(tmp_path, monkeypatch):
    (tmp_path / "rl_test_vanishing.py").write_text("def f(response, answer, prompt):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import rl_test_vanishing

    (tmp_path / "rl_test_vanishing.py").unlink()  # gone before the worker imports it
    shutil.rmtree(tmp_path / "__pycache__", ignore_errors=True)
    runner = RewardRunner(rl_test_vanishing.f, timeout_s=1.0)
    monkeypatch.delitem(sys.modules, "rl_test_vanishing")
    with pytest.raises(RewardSetupError, match="No module named 'rl_test_vanishing'"):
        runner.wait_ready()


def test_bad_call_types_raise():
    with RewardRunner("arithmetic", timeout_s=5.0) as runner:
        with pytest.raises(TypeError, match="reward call 0"):
            runner.score([([1, 2], "3", "")])


# ----------------------------------------------------------------------------- actor
def test_reward_worker_plain():
    from actors.reward_worker import RewardWorker

    worker = RewardWorker(RewardConfig(fn="arithmetic", timeout_s=5.0))
    try:
        outcome = worker.score(["47", "40"], ["47", "47"], ["12+35=", "12+35="])
        assert outcome.rewards.tolist() == [1.0, 0.0] and bool(outcome.valid.all())
        with pytest.raises(ValueError, match="2 responses, 1 answers"):
            worker.score(["1", "2"], ["1"], ["", ""])
    finally:
        worker.close()
    with pytest.raises(ValueError, match=r"unknown reward config keys \['timeout'\]"):
        RewardWorker({"fn": "arithmetic", "timeout": 5})


@pytest.mark.runtime
def test_reward_worker_under_ray(reward_module, ray_cluster):
    from actors.reward_worker import RewardWorker

    ray = ray_cluster
    pythonpath = os.pathsep.join([str(REPO), str(reward_module)])
    # The actor takes the config as the controller sends it: a plain dict.
    cfg = {"fn": "rl_test_rewards:flaky", "timeout_s": 5.0, "num_workers": 1}
    worker = ray.remote(num_cpus=0.1, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})(RewardWorker).remote(cfg)
    try:
        assert ray.get(worker.ready.remote())
        outcome = ray.get(worker.score.remote(["ok", "boom", "ok"], [None, None, None], ["a", "b", "c"]))
        assert outcome.valid.tolist() == [True, False, True]
        assert outcome.errors == 1 and "ZeroDivisionError" in outcome.failures[0].message
        assert outcome.rewards[0].item() == 0.5
    finally:
        ray.kill(worker)


def test_memory_limit_turns_a_runaway_reward_into_a_counted_error(reward_module):
    """Reward code that executes model output runs in a subprocess with an address-space cap."""
    from rlplat.rewards.runner import RewardRunner

    runner = RewardRunner("rl_test_rewards:hungry", timeout_s=30.0, memory_limit_mb=200)
    try:
        outcome = runner.score([("eat", "1000", "p0"), ("eat", "50", "p1"), ("ok", None, "p2")])
    finally:
        runner.close()
    assert outcome.valid.tolist() == [False, True, True]
    assert outcome.errors == 1 and "MemoryError" in outcome.failures[0].message
    assert outcome.rewards[1].item() == 50 * 2**20  # within the cap it works


def test_checker_judge_is_an_antisymmetric_preference():
    """Nash-MP needs P(a > b) + P(b > a) = 1 (so P(a > a) = 1/2): the 1/2 baseline relies on it."""
    from rlplat.rewards.judges import checker_judge

    answers = [" 83", " 73", "83", " x", ""]
    for a in answers:
        for b in answers:
            p, q = checker_judge("38+45=", a, b, "83"), checker_judge("38+45=", b, a, "83")
            assert 0.0 <= p <= 1.0 and p + q == 1.0
    assert checker_judge("38+45=", " 83", " 73", "83") == 1.0
