"""Config schema: YAML + overrides load into typed dataclasses; every mistake fails fast and says what."""
import os
import subprocess
import sys
import time

import pytest
import yaml

from rlplat import algorithms
from rlplat.config import ConfigError, RunConfig, load_config, save_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [os.path.join(ROOT, "configs", f"{n}.yaml") for n in ("grpo", "kdrl", "dph_rl", "nash_mp", "nash_omd")]


@pytest.fixture(autouse=True)
def _fresh_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_configs_load_validate_and_plan(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    plan = algorithms.get(cfg.algorithm.name).plan(cfg)
    assert plan.name == cfg.algorithm.name
    assert plan.group_size == cfg.algorithm.group_size >= 2


def test_plans_declare_the_roles_each_algorithm_needs():
    plans = {os.path.basename(p)[:-5]: algorithms.get(load_config(p).algorithm.name).plan(load_config(p)) for p in CONFIGS}
    assert plans["grpo"].scorer_roles == {"reference"}
    assert plans["kdrl"].scorer_roles == {"teacher"}  # KDRL: no reference KL
    assert plans["dph_rl"].scorer_roles == frozenset() and plans["dph_rl"].initial_samples  # no reference actor
    assert plans["nash_mp"].scorer_roles == {"reference", "snapshot"} and plans["nash_mp"].opponents
    # Nash-MP's one-step baseline: the same roles, advantage and loss, its own loop.
    omd, mp = plans["nash_omd"], plans["nash_mp"]
    assert (omd.loop, mp.loop) == ("mirror_descent", "mirror_prox")
    assert (omd.scorer_roles, omd.preference, omd.advantage, omd.loss) == (mp.scorer_roles, mp.preference, mp.advantage, mp.loss)
    assert [t.name for t in plans["kdrl"].terms] == ["kd_teacher"]
    kd = plans["kdrl"].terms[0]
    assert (kd.divergence, kd.anchor, kd.mask) == ("k2", "teacher", "incorrect")
    assert [kd.coef(s) for s in (0, 80, 1000)] == pytest.approx([5e-3, 1e-3, 1e-3])


def test_loss_aggregation_defaults_to_the_algorithms_and_an_explicit_one_wins():
    plan = lambda path, *o: algorithms.get(load_config(path, o).algorithm.name).plan(load_config(path, o))  # noqa: E731
    nash = os.path.join(ROOT, "configs", "nash_mp.yaml")
    assert load_config(nash).algorithm.loss_agg is None
    assert plan(nash).loss.agg == "seq-mean-token-sum"  # REINFORCE on sequences
    assert plan(nash, "algorithm.loss_agg=token-mean").loss.agg == "token-mean"
    assert plan(CONFIGS[0], "algorithm.loss_agg=null").loss.agg == "seq-mean-token-mean"
    # One update per batch: "old" comes from the training forward; several: from a separate pass.
    assert plan(CONFIGS[0]).loss.old_from_forward and not plan(CONFIGS[0], "algorithm.ppo_epochs=2").loss.old_from_forward
    assert not plan(nash).loss.old_from_forward
    assert plan(CONFIGS[0], "algorithm.rollout_correction.kind=tis").loss.old_from_forward
    assert not plan(CONFIGS[0], "algorithm.rollout_correction.kind=mis").loss.old_from_forward  # normalisers need it first
    assert plan(nash).loss.advantage.params == (("beta", 0.1), ("eta", 1.0))


def test_overrides_apply_with_types():
    cfg = load_config(CONFIGS[0], ["trainer.max_steps=3", "trainer.lr=0.5", "rollout.backend=hf", "model.path=builtin:tiny-policy"])
    assert cfg.trainer.max_steps == 3 and isinstance(cfg.trainer.max_steps, int)
    assert cfg.trainer.lr == 0.5 and cfg.rollout.backend == "hf"


def test_a_mapping_override_replaces_a_free_form_dict_and_merges_into_a_section():
    """``params={}`` empties a divergence's params (it used to merge, changing nothing);
    ``params.key=v`` sets one entry; a mapping given to a schema section keeps its other fields."""
    def term(*overrides):
        return load_config(os.path.join(ROOT, "configs", "sinkd.yaml"), list(overrides), validate=False).algorithm.divergences[0]

    assert term().params == {"epsilon": 0.1, "iters": 20.0, "temperature": 2.0}
    assert term("algorithm.divergences.0.params={}").params == {}
    assert term("algorithm.divergences.0.params={epsilon: 0.2}").params == {"epsilon": 0.2}
    assert term("algorithm.divergences.0.params.epsilon=0.3").params == {"epsilon": 0.3, "iters": 20.0, "temperature": 2.0}
    coef = term("algorithm.divergences.0.coef={value: 0.5}").coef
    assert (coef.kind, coef.value) == (term().coef.kind, 0.5)
    with_ds = load_config(CONFIGS[0], ["trainer.deepspeed={gradient_clipping: 2.0}"], validate=False)
    assert load_config(CONFIGS[0], ["trainer.deepspeed={gradient_clipping: 2.0}", "trainer.deepspeed={}"],
                       validate=False).trainer.deepspeed == {} != with_ds.trainer.deepspeed


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS[1], ["trainer.seed=7"])
    out = tmp_path / "config.yaml"
    save_config(cfg, str(out))
    again = load_config(str(out))
    assert again == cfg
    assert yaml.safe_load(out.read_text())["trainer"]["seed"] == 7


# Each case: (config file, overrides, fragments the error message must contain)
MISTAKES = [
    ("grpo", ["trainer.max_stepz=3"], ["trainer.max_stepz", "max_steps"]),
    ("grpo", ["trainer.max_steps=three"], ["trainer.max_steps", "three"]),
    ("grpo", ["trainer.zero_stage=4"], ["trainer.zero_stage", "0-3"]),
    ("grpo", ["algorithm.group_size=1"], ["algorithm.group_size", ">= 2"]),
    ("kdrl", ["roles.teacher.path=null"], ["kdrl", "roles.teacher.path"]),
    ("grpo", ["model.path=/no/such/model"], ["model.path", "/no/such/model", "does not exist"]),
    ("grpo", ["model.attn_implementation=fast"], ["model.attn_implementation", "'fast'", "eager", "sdpa"]),
    ("grpo", ["data.train_path=/no/such/prompts.jsonl"], ["data.train_path", "/no/such/prompts.jsonl"]),
    ("grpo", ["rollout.backend=sglang"], ["rollout.backend", "sglang", "vllm", "hf"]),
    ("grpo", ["algorithm.divergences.0.divergence=k9"], ["algorithm.divergences[0].divergence", "k9", "k3"]),
    ("grpo", ["algorithm.divergences.0.anchor=teacher"], ["algorithm.divergences[0].anchor", "teacher", "grpo"]),
    ("dph_rl", ["algorithm.divergences.0.divergence=k3"], ["algorithm.divergences[0].divergence", "k3", "anchor"]),
    ("grpo", ["algorithm.loss_agg=mean"], ["algorithm.loss_agg", "token-mean"]),
    ("grpo", ["reward.fn=no_such_module_xyz:score"], ["reward.fn", "no_such_module_xyz"]),
    ("nash_mp", ["algorithm.advantage=grpo"], ["algorithm.advantage", "nash_mp"]),
    ("grpo", ["rollout.max_new_tokens=500"], ["rollout.max_model_len", "rollout.max_new_tokens"]),
    ("grpo", ["trainer.max_steps"], ["trainer.max_steps", "key=value"]),
    ("grpo", ["algorithm.divergences.0.divergence=full_reverse_kl"], ["algorithm.divergences[0].divergence", "full-distribution", "roles.teacher.top_k_logits"]),
    ("kdrl", ["algorithm.divergences.0.divergence=full_reverse_kl"], ["algorithm.divergences[0].divergence", "roles.teacher.top_k_logits > 0"]),
    ("kdrl", ["roles.teacher.top_k_logits=16"], ["roles.teacher.top_k_logits=16", "full-distribution"]),
    ("kdrl", ["algorithm.divergences.0.anchor=reference"], ["kdrl", "anchor 'teacher'"]),
    ("dph_rl", ["algorithm.divergences.0.mask=all"], ["algorithm.divergences[0].mask", "rehearsal"]),
    ("nash_mp", ["algorithm.nash_mp.beta=0"], ["algorithm.nash_mp.beta", "> 0"]),
    ("nash_mp", ["algorithm.nash_mp.eta=-1"], ["eta=-1", "> 0"]),
    ("nash_mp", ["algorithm.nash_mp.inner_steps=0"], ["algorithm.nash_mp.inner_steps", ">= 1"]),
    ("nash_mp", ["algorithm.advantage_params={beta: 0.3}"], ["algorithm.advantage_params", "algorithm.nash_mp"]),
    ("grpo", ["algorithm.advantage=nash_mp"], ["algorithm.advantage", "does not fit"]),
    ("grpo", ["trainer.max_staleness=-1"], ["trainer.max_staleness", ">= 0"]),
    ("nash_mp", ["trainer.max_staleness=1"], ["trainer.max_staleness", "mirror_prox"]),
    ("grpo", ["trainer.max_staleness=1", "algorithm.dynamic_sampling=true"], ["trainer.max_staleness", "dynamic_sampling"]),
    ("grpo", ["algorithm.dynamic_sampling=true", "algorithm.max_sampling_rounds=0"], ["algorithm.max_sampling_rounds", ">= 1"]),
    ("nash_mp", ["algorithm.dynamic_sampling=true"], ["algorithm.dynamic_sampling", "nash_mp"]),
    ("nash_mp", ["algorithm.nash_mp.judge=style"], ["algorithm.nash_mp.judge='style'", "checker, style_rps"]),
    ("nash_omd", ["algorithm.nash_mp.eta=0"], ["algorithm.nash_mp.beta", "eta=0", "> 0"]),
    ("nash_omd", ["algorithm.nash_mp.inner_steps=0"], ["algorithm.nash_mp.inner_steps", ">= 1"]),
    ("nash_omd", ["algorithm.advantage=grpo"], ["algorithm.advantage", "nash_mp"]),
    ("nash_omd", ["trainer.max_staleness=1"], ["trainer.max_staleness", "mirror_descent"]),
    ("nash_omd", ["algorithm.fdpo.beta=0.3"], ["algorithm.fdpo", "nash_omd"]),
    ("grpo", ["trainer.log_level=verbose"], ["trainer.log_level", "verbose", "warning", "info", "debug"]),
]


@pytest.mark.parametrize("name,overrides,fragments", MISTAKES, ids=[" ".join(m[1]) for m in MISTAKES])
def test_config_mistakes_fail_fast_with_a_message_naming_the_key(name, overrides, fragments):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_config(os.path.join(ROOT, "configs", f"{name}.yaml"), overrides)
    assert time.perf_counter() - t0 < 10
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: 2\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(bad))
    assert "bad.yaml" in str(err.value) and "trainer.learning_rate" in str(err.value) and "lr" in str(err.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file 'nope.yaml' does not exist"):
        load_config("nope.yaml")


def test_existing_run_is_never_overwritten_without_resume(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(ConfigError, match="trainer.resume=auto"):
        load_config(CONFIGS[0], [f"trainer.output_dir={run}"])
    assert (run / "metrics.jsonl").read_text() == '{"step": 0}\n'
    load_config(CONFIGS[0], [f"trainer.output_dir={run}", "trainer.resume=auto"])


def test_cli_reports_config_errors_before_ray_starts():
    """The real entry point: exit code 2, the key in stderr, in seconds (no Ray, no model build)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "launch.train", "--config", CONFIGS[0], "trainer.zero_stage=5"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "trainer.zero_stage=5" in proc.stderr and "0-3" in proc.stderr
    assert "Ray" not in proc.stdout
    assert time.perf_counter() - t0 < 60


def test_cluster_example_parses_and_only_lacks_its_shared_paths():
    """The documented 2 x 8 GPU example is on the same schema; here only its /shared paths are missing."""
    path = os.path.join(ROOT, "configs", "cluster_7b_grpo.yaml")
    cfg = load_config(path, validate=False)
    assert (cfg.rollout.num_engines, cfg.rollout.tensor_parallel_size, cfg.trainer.num_ranks) == (4, 2, 8)
    with pytest.raises(ConfigError, match="data.train_path='/shared/data/gsm8k/train.parquet' does not exist"):
        load_config(path)
    assert yaml.safe_load(open(os.path.join(ROOT, "launch", "runtime_env.yaml")))["pip"]["packages"]


def test_teacher_with_another_tokenizer_fails_before_any_actor_starts(tmp_path):
    """KDRL compares per-token log-probs, so the teacher must tokenise like the student."""
    import json as _json

    from rlplat.models.tiny import build_tiny_model

    student, teacher = tmp_path / "student", tmp_path / "teacher"
    build_tiny_model(student, size="policy", warm_start_steps=0)
    build_tiny_model(teacher, size="policy", warm_start_steps=0)
    spec = _json.loads((teacher / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]  # same size, different ids
    (teacher / "tokenizer.json").write_text(_json.dumps(spec))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "launch.train", "--config", os.path.join(ROOT, "configs", "kdrl.yaml"),
         f"model.path={student}", f"roles.teacher.path={teacher}", f"trainer.output_dir={tmp_path / 'run'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "roles.teacher.path" in proc.stderr and "different tokenizer" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and "Ray" not in proc.stdout
    assert time.perf_counter() - t0 < 120
