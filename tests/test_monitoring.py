"""launch.monitoring: Prometheus names, TensorBoard event files, and a real Ray metrics scrape."""
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from launch.monitoring import MetricsExporter, prometheus_name
from tests.conftest import own_cluster_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALID = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def test_prometheus_names_are_valid_and_readable():
    assert prometheus_name("reward/mean") == "rlplat_reward_mean"
    assert prometheus_name("half/loss/policy") == "rlplat_half_loss_policy"
    assert prometheus_name("throughput/tokens_per_s") == "rlplat_throughput_tokens_per_s"
    for key in ["reward/mean", "9lives", "div/kl-ref.k3", "a b:c", "ünï/cødé", ""]:
        assert VALID.match(prometheus_name(key)), key


def test_colliding_keys_get_distinct_stable_names():
    exp = MetricsExporter("unused", "r", enable_ray=False, enable_tensorboard=False)
    first, second = exp.name_of("a/b"), exp.name_of("a_b")
    assert first == "rlplat_a_b"
    assert second != first and second.startswith("rlplat_a_b_") and VALID.match(second)
    assert exp.name_of("a_b") == second and exp.name_of("a/b") == first  # fixed once given


def test_write_needs_step(tmp_path):
    exp = MetricsExporter(str(tmp_path), "r", enable_ray=False, enable_tensorboard=False)
    with pytest.raises(KeyError, match="step"):
        exp.write({"reward/mean": 1.0})


def test_ray_side_is_skipped_without_ray(tmp_path, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    exp = MetricsExporter(str(tmp_path), "r", enable_ray=True, enable_tensorboard=False)
    exp.write({"step": 0, "reward/mean": 0.5})
    assert exp._gauges == {}


def test_tensorboard_scalars_round_trip(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    exp = MetricsExporter(str(tmp_path), "r", enable_ray=False)
    rows = [{"step": s, "reward/mean": 0.1 * s, "half/loss/policy": -s - 0.5, "note": "text"} for s in (3, 4, 5)]
    for row in rows:
        exp.write(row)
        # flushed every step: readable before close
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["half/loss/policy", "reward/mean"]  # no "step", no strings
    for key in ("reward/mean", "half/loss/policy"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [3, 4, 5]
        assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6)
    exp.close()


# A fresh Ray in a child process: the report interval must be set before ray.init, and the session
# cluster of conftest.py stays untouched. The child prints the rlplat lines of the scrape as JSON.
_RAY_SCRIPT = textwrap.dedent("""
    import json, sys, tempfile, time, urllib.request
    import ray
    from launch.monitoring import MetricsExporter

    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    port = ray._private.worker.global_worker.node.metrics_export_port
    assert ray.nodes()[0]["MetricsExportPort"] == port
    assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
    run_dir = tempfile.mkdtemp()
    a = MetricsExporter(run_dir, "run-a", enable_tensorboard=False)
    b = MetricsExporter(run_dir, "run-b", enable_tensorboard=False)
    for step in range(3):
        a.write({"step": step, "reward/mean": 0.25 * (step + 1), "half/loss/policy": -1.5})
        b.write({"step": step, "reward/mean": -2.0})
    t0, lines = time.time(), []
    while time.time() - t0 < 30:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            body = ""
        lines = [l for l in body.splitlines() if l.startswith("ray_rlplat_")]
        if sum(l.startswith("ray_rlplat_reward_mean{") for l in lines) >= 2 and any("half_loss" in l for l in lines):
            break
        time.sleep(0.2)
    print(json.dumps({"latency_s": time.time() - t0, "lines": lines}))
    ray.shutdown()
""")


def _series(lines, name):
    """{run tag: value} of one metric in Prometheus text lines."""
    out = {}
    for line in lines:
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            out[labels["run"]] = float(m.group(2))
    return out


@pytest.mark.runtime
def test_ray_gauges_reach_prometheus():
    # Ray 2.60 turns _node_ip_address="127.0.0.1" into the machine's outward IP (and its metrics
    # server then listens on 0.0.0.0) unless this variable is 0: with it, every port is on loopback.
    env = own_cluster_env(RAY_metrics_report_interval_ms="500", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", _RAY_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"scrape latency {result['latency_s']:.2f} s")
    assert _series(result["lines"], "ray_rlplat_reward_mean") == {"run-a": 0.75, "run-b": -2.0}
    assert _series(result["lines"], "ray_rlplat_half_loss_policy") == {"run-a": -1.5}
    assert _series(result["lines"], "ray_rlplat_step") == {"run-a": 2.0, "run-b": 2.0}


def test_driver_log_lines_name_the_step_and_the_figures():
    from launch.metrics import eval_line, progress_line

    metrics = {"eval/pass@1": 0.82, "eval/pass@1_greedy": 0.9375, "eval/pass@8": 0.953, "eval/pass@4": 0.9,
               "eval/num_prompts": 64.0, "eval/samples_per_prompt": 8.0, "eval/pass@1_foo": 1.0}
    assert eval_line(9, metrics) == ("eval after step 10: held-out pass@1 0.820 (greedy 0.938), pass@4 0.900, "
                                     "pass@8 0.953 on 64 prompts x 8")
    assert eval_line(-1, metrics).startswith("eval before training: held-out pass@1 0.820")
    line = progress_line(4, 30, {"reward/mean": 0.75, "reward/pass_rate": 0.75, "time/step": 2.0}, started=0.0)
    assert line.startswith("step 5/30 reward 0.750 pass 0.750") and "ETA" in line
    rl = {"reward/mean": 0.75, "reward/pass_rate": 0.5, "div/kl_ref": 1.234e-4, "div/kd_teacher": 0.0215,
          "actor/entropy": 0.3086, "trainer/grad_norm": 3.877, "response/length_mean": 4.375, "trainer/lr": 1e-4,
          "loss/total": 3.7e-9, "time/step": 2.0}
    line = progress_line(4, 30, rl, started=time.time())
    assert line.startswith("step 5/30 reward 0.750 pass 0.500 div/kd_teacher 0.0215 div/kl_ref 0.000123 "
                           "entropy 0.309 grad_norm 3.88 len 4.4 lr 1.00e-04 2.0s/step ETA "), line
    assert "\n" not in line and "loss" not in line  # one line; the ~0 surrogate says nothing
    pairs = progress_line(0, 20, {"rewards/accuracy": 0.625, "rewards/margin": 0.1, "div/f_dpo": 0.2}, started=0.0)
    assert pairs.startswith("step 1/20 pair accuracy 0.625 margin +0.100 div/f_dpo 0.2 "), pairs
    assert "reward " not in pairs and "lr" not in pairs  # absent figures are left out
