"""Schema keys for capabilities not built yet are refused in validation, naming the key and what works."""
import os
import re

import pytest

from rlplat import divergences
from rlplat.config import ConfigError, load_config
from rlplat.config.validate import REFUSED, refused_values

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRPO = os.path.join(ROOT, "configs", "grpo.yaml")


@pytest.fixture(autouse=True)
def _fresh_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("role,says", [("reference", "only the teacher's scorer sends top-k"),
                                        ("preference", "does not score next-token distributions")])
def test_top_k_logits_is_refused_for_roles_other_than_the_teacher(role, says):
    with pytest.raises(ConfigError) as err:
        load_config(GRPO, [f"roles.{role}.top_k_logits=8"])
    msg = str(err.value)
    assert msg.startswith(f"roles.{role}.top_k_logits=8: ") and says in msg


def test_teacher_top_k_logits_acts_only_with_a_full_term():
    """The teacher's top_k_logits is not refused as a key: it acts with a full term on the teacher,
    and without one it is refused by the algorithm check, naming what would use it."""
    kdrl = os.path.join(ROOT, "configs", "kdrl.yaml")
    with pytest.raises(ConfigError, match=r"^roles\.teacher\.top_k_logits=8 acts only for a full-distribution"):
        load_config(kdrl, ["roles.teacher.top_k_logits=8"])
    cfg = load_config(kdrl, ["roles.teacher.top_k_logits=8", "algorithm.divergences.0.divergence=full_jsd"])
    assert cfg.roles.teacher.top_k_logits == 8 and refused_values(cfg) == []


def test_top_k_logits_zero_and_the_shipped_configs_pass():
    for name in ("grpo", "kdrl", "dph_rl", "nash_mp"):
        cfg = load_config(os.path.join(ROOT, "configs", f"{name}.yaml"), ["roles.reference.top_k_logits=0"])
        assert refused_values(cfg) == []


def test_preference_pool_is_refused_but_scorer_pools_are_not():
    with pytest.raises(ConfigError, match=r"^roles\.preference\.num_actors=2: .*keep it 1"):
        load_config(GRPO, ["roles.preference.num_actors=2"])
    cfg = load_config(GRPO, ["roles.reference.num_actors=2", "roles.teacher.num_actors=3"])
    assert (cfg.roles.reference.num_actors, cfg.roles.teacher.num_actors) == (2, 3)
    with pytest.raises(ConfigError, match=r"roles\.reference\.num_actors=0 must be >= 1"):
        load_config(GRPO, ["roles.reference.num_actors=0"])
    with pytest.raises(ConfigError, match=r"roles\.preference\.micro_batch_tokens=0 must be >= 1"):
        load_config(GRPO, ["roles.preference.micro_batch_tokens=0"])


def test_refused_message_lists_exactly_the_per_token_estimators_on_policy_samples():
    """The reference's top_k_logits reason names every per-token estimator the reference can use."""
    named = set(re.findall(r"\b[a-z][a-z0-9_]*\b", REFUSED["roles.reference.top_k_logits"])) & set(divergences.names())
    assert named == {n for n in divergences.names() if divergences.info(n) == "policy"}


def test_full_divergence_term_on_the_reference_is_refused_with_the_estimators_that_work():
    with pytest.raises(ConfigError) as err:
        load_config(GRPO, ["algorithm.divergences.0.divergence=full_jsd"])
    msg = str(err.value)
    assert "algorithm.divergences[0].divergence='full_jsd'" in msg and "roles.teacher.top_k_logits" in msg
    assert "['k1', 'k2', 'k3', 'k3_st']" in msg  # the reference anchor sees on-policy samples


@pytest.mark.parametrize("config,override,role", [
    ("grpo", "roles.teacher.path=builtin:tiny-teacher", "teacher"),      # no term anchored at the teacher
    ("dph_rl", "roles.reference.num_actors=2", "reference"),             # anchored at pi_0's samples, no reference
    ("kdrl", "roles.preference.path=builtin:tiny-teacher", "preference"),  # no preference model
])
def test_settings_of_a_role_the_run_never_starts_are_refused(config, override, role):
    from rlplat import algorithms

    cfg = load_config(os.path.join(ROOT, "configs", f"{config}.yaml"), [override])
    with pytest.raises(ConfigError, match=rf"^roles\.{role} is set, but algorithm '{cfg.algorithm.name}' .* starts no {role}"):
        algorithms.get(cfg.algorithm.name).plan(cfg)
    used = load_config(os.path.join(ROOT, "configs", "kdrl.yaml"), ["roles.teacher.num_actors=2"])
    assert algorithms.get("kdrl").plan(used).scorer_roles == {"teacher"}
