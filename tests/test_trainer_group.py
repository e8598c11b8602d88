"""TrainerGroup on a real local Ray cluster and real DeepSpeed (CPU, gloo), 2 ranks, ZeRO 0/2/3.

The central check: one DeepSpeed update on a mini-batch split over 2 ranks and several token-budget
micro-batches (some of them zero-weight padding) gives the same parameters as a single-process
plain-PyTorch AdamW step on the whole mini-batch with the same loss (``rlplat.losses.policy_loss``).
Adam's update is invariant to a global gradient scale, so the gradient norm is compared too.
"""
from __future__ import annotations

import pytest
import torch

from actors.trainer.group import merge_rank_metrics, split_rows
from actors.trainer.rank import RankMetrics
from rlplat.batch import Batch
from rlplat.config.schema import ResourcesConfig, RunConfig

LR, WEIGHT_DECAY, GRAD_CLIP, MICRO_BATCH_TOKENS = 1e-2, 0.1, 0.5, 16
# Adam's first step is lr * g / (|g| + eps): with the usual 1e-8, gradient entries near 0 turn float
# rounding into O(lr) differences. eps 1e-3 keeps the comparison well conditioned and makes the
# update depend on the gradient's scale, which the default would hide.
ADAM_EPS = 1e-3
STEP = 3  # schedule step passed to the loss


# ============================================================================ pure helpers
def make_batch(seed: int, groups: int = 5, per_group: int = 2, p: int = 8, r: int = 7) -> Batch:
    """Left-padded prompts, right-padded responses of random lengths, with the roles the loss reads."""
    g = torch.Generator().manual_seed(seed)
    b = groups * per_group
    pl = torch.randint(2, p + 1, (b,), generator=g)
    rl = torch.randint(1, r + 1, (b,), generator=g)
    prompt_ids = torch.zeros(b, p, dtype=torch.long)
    prompt_mask = torch.zeros(b, p, dtype=torch.long)
    response_ids = torch.zeros(b, r, dtype=torch.long)
    response_mask = torch.zeros(b, r)
    for i in range(b):
        prompt_ids[i, p - pl[i]:] = torch.randint(4, 100, (int(pl[i]),), generator=g)
        prompt_mask[i, p - pl[i]:] = 1
        response_ids[i, : rl[i]] = torch.randint(4, 100, (int(rl[i]),), generator=g)
        response_mask[i, : rl[i]] = 1
    return Batch(
        prompt_ids, prompt_mask, response_ids, response_mask,
        group_ids=torch.arange(b) // per_group,
        advantages=torch.randn(b, generator=g),
        rewards=torch.randint(0, 2, (b,), generator=g).float(),
    )


def with_roles(batch: Batch, logp: torch.Tensor, seed: int) -> Batch:
    """Set "old" and "reference" log-probs near ``logp`` so ratios differ from 1 and some clip."""
    g = torch.Generator().manual_seed(seed)
    mask = batch.response_mask
    batch.logprobs["old"] = (logp + 0.3 * torch.randn(logp.shape, generator=g)) * mask
    batch.logprobs["reference"] = (logp + 0.2 * torch.randn(logp.shape, generator=g)) * mask
    return batch


def test_split_rows_keeps_groups_and_balances_tokens():
    batch = make_batch(seed=0, groups=6)
    parts = split_rows(batch, 2, keep_groups=True)
    assert sorted(torch.cat(parts).tolist()) == list(range(len(batch)))
    for part in parts:  # a group never straddles ranks
        assert not set(batch.group_ids[part].tolist()) & set(
            batch.group_ids[torch.cat([q for q in parts if q is not part])].tolist())
    loads = [int(batch.num_tokens[q].sum()) for q in parts]
    biggest_group = max(int(batch.num_tokens[batch.group_ids == gid].sum()) for gid in range(6))
    assert abs(loads[0] - loads[1]) <= biggest_group
    assert [len(q) for q in split_rows(batch, 3, keep_groups=False)] == [4, 4, 4]
    assert sum(len(q) == 0 for q in split_rows(make_batch(seed=0, groups=1), 2, keep_groups=True)) == 1


def test_merge_rank_metrics():
    a = RankMetrics({"loss/total": 2.0}, {"actor/clip_frac": [0.5 * 10, 10]}, {"trainer/grad_norm": 3.0,
                    "trainer/micro_batches": 2.0, "time/train_step_s": 1.0})
    b = RankMetrics({"loss/total": 4.0}, {"actor/clip_frac": [1.0 * 30, 30]}, {"trainer/grad_norm": 3.0,
                    "trainer/micro_batches": 3.0, "time/train_step_s": 2.0})
    m = merge_rank_metrics([a, b])
    assert m == {"loss/total": 3.0, "actor/clip_frac": 35 / 40, "trainer/grad_norm": 3.0,
                 "trainer/micro_batches": 5.0, "time/train_step_s": 2.0}


# ============================================================================ Ray + DeepSpeed
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlplat.models.tokenizer import save_tokenizer, vocab_size

    out = tmp_path_factory.mktemp("tiny-policy")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    save_tokenizer(out)
    return str(out)


@pytest.fixture(scope="module", params=[0, 2, 3], ids=lambda s: f"zero{s}")
def group(request, ray_cluster, model_dir, tmp_path_factory):
    """(group, dir of a checkpoint of its fresh state) for one ZeRO stage; ``ray_cluster`` is the
    session-wide local cluster of conftest.py."""
    pytest.importorskip("deepspeed")
    from actors.trainer import TrainerGroup

    stage = request.param
    cfg = RunConfig()
    cfg.trainer.zero_stage = stage
    cfg.trainer.lr, cfg.trainer.weight_decay, cfg.trainer.grad_clip = LR, WEIGHT_DECAY, GRAD_CLIP
    cfg.trainer.micro_batch_tokens, cfg.trainer.adam_eps = MICRO_BATCH_TOKENS, ADAM_EPS
    if stage == 3:  # partition every parameter of the tiny model (the default threshold would keep them all whole)
        cfg.trainer.deepspeed = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}
    g = TrainerGroup(cfg, model_dir, 2, ResourcesConfig(trainer_cpus=0.5), temperature=1.0,
                     name_prefix=f"test-zero{stage}")
    fresh = str(tmp_path_factory.mktemp(f"fresh-zero{stage}"))
    g.save_checkpoint(fresh, tag="fresh")
    yield g, fresh
    g.shutdown()


def loss_spec():
    from rlplat.losses import DivergenceTerm, PolicyLossConfig
    from rlplat.schedules import CoefSchedule

    cfg = PolicyLossConfig(eps_low=0.2, eps_high=0.28, agg="seq-mean-token-mean")
    terms = [DivergenceTerm(name="kl_ref", divergence="k3", anchor="reference", coef=CoefSchedule(value=0.5))]
    return cfg, terms


def reference_update(model_dir: str, batch: Batch):
    """Single process, plain PyTorch: loss on the whole mini-batch, clip, one AdamW step."""
    from rlplat.losses import policy_loss
    from rlplat.modeling import load_causal_lm, response_logprobs

    model = load_causal_lm(model_dir).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), weight_decay=WEIGHT_DECAY, eps=ADAM_EPS)
    cfg, terms = loss_spec()
    logp = response_logprobs(model, batch, micro_batch_tokens=10_000)
    loss, _ = policy_loss(logp, batch, cfg, terms, STEP)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    opt.step()
    return dict(model.named_parameters()), float(loss.detach()), float(norm)


def weights(group) -> dict:
    return {k: v.clone() for k, v in group.get_weights()}


@pytest.mark.runtime
def test_update_equals_single_process_adamw(group, model_dir):
    g, fresh = group
    g.load_checkpoint(fresh, tag="fresh")  # order-independent: start from the initial weights and optimizer
    from rlplat.modeling import load_causal_lm, response_logprobs

    with torch.no_grad():
        logp0 = response_logprobs(load_causal_lm(model_dir), make_batch(seed=1), 10_000)
    batch = with_roles(make_batch(seed=1), logp0, seed=1)
    metrics = g.train(batch, STEP, loss_spec())
    ref_params, ref_loss, ref_norm = reference_update(model_dir, batch)

    # The setup must really exercise multi-micro-batch accumulation and zero-weight padding passes.
    assert metrics["trainer/micro_batches"] >= 5 and metrics["trainer/padding_micro_batches"] >= 1, metrics
    assert metrics["loss/total"] == pytest.approx(ref_loss, rel=1e-5)
    assert metrics["trainer/grad_norm"] == pytest.approx(ref_norm, rel=1e-5)
    assert ref_norm > GRAD_CLIP  # clipping is active, so the global norm over ranks matters
    got = weights(g)
    assert set(got) == set(ref_params)
    for name, value in got.items():
        torch.testing.assert_close(value, ref_params[name].detach(), atol=1e-5, rtol=0, msg=name)


@pytest.mark.runtime
def test_get_weights_export_and_logprobs_agree(group, tmp_path):
    g, _ = group
    from transformers import AutoTokenizer

    from rlplat.modeling import load_causal_lm, response_logprobs

    got = weights(g)
    out = g.export_hf(str(tmp_path / "hf"))
    exported = load_causal_lm(out)
    assert AutoTokenizer.from_pretrained(out).pad_token_id == 0
    params = dict(exported.named_parameters())
    assert set(params) == set(got)
    for name, value in got.items():
        assert torch.equal(params[name].detach(), value), name
    batch = make_batch(seed=2, groups=7, per_group=1)  # odd rows: the two ranks score different counts
    with torch.no_grad():
        expected = response_logprobs(exported, batch, 10_000)
    torch.testing.assert_close(g.compute_logprobs(batch), expected, atol=1e-5, rtol=0)
    with torch.no_grad():  # a per-call temperature (the sync probe asks for 1.0 whatever the group's is)
        tempered = response_logprobs(exported, batch, 10_000, temperature=0.5)
    torch.testing.assert_close(g.compute_logprobs(batch, temperature=0.5), tempered, atol=1e-5, rtol=0)


@pytest.mark.runtime
def test_snapshot_restore_reproduces_a_step_exactly(group, model_dir):
    g, _ = group
    spec = loss_spec()
    batch_a = with_roles(make_batch(seed=3), torch.zeros(10, 7), seed=3)
    batch_b = with_roles(make_batch(seed=4), torch.zeros(10, 7), seed=4)
    batch_a.logprobs["old"] = g.compute_logprobs(batch_a)
    batch_b.logprobs["old"] = g.compute_logprobs(batch_b)
    g.train(batch_a, STEP, spec)  # non-trivial Adam moments before the snapshot
    g.snapshot_state()
    snap = weights(g)
    first = g.train(batch_b, STEP, spec)
    after_first = weights(g)
    assert any(not torch.equal(after_first[k], snap[k]) for k in snap)
    g.restore_state()
    assert all(torch.equal(v, snap[k]) for k, v in weights(g).items())
    second = g.train(batch_b, STEP, spec)
    assert second["loss/total"] == first["loss/total"]
    for name, value in weights(g).items():
        assert torch.equal(value, after_first[name]), name  # equal moments give an equal update


@pytest.mark.runtime
def test_checkpoint_round_trip(group, tmp_path):
    g, _ = group
    batch = with_roles(make_batch(seed=5), torch.zeros(10, 7), seed=5)
    g.train(batch, STEP, loss_spec())
    steps = g.global_steps()
    tag = g.save_checkpoint(str(tmp_path), client_state={"controller_step": 7})
    saved = weights(g)
    g.train(batch, STEP, loss_spec())
    assert g.global_steps() == steps + 1
    state = g.load_checkpoint(str(tmp_path), tag=tag)
    assert state["controller_step"] == 7 and g.global_steps() == steps
    assert all(torch.equal(v, saved[k]) for k, v in weights(g).items())


@pytest.mark.runtime
def test_scorer_loaded_with_trainer_weights_scores_like_the_trainer(group, model_dir):
    from actors.scorer import Scorer

    g, _ = group
    scorer = Scorer("snapshot", model_dir, micro_batch_tokens=20)
    batch = make_batch(seed=6)
    g.train(with_roles(make_batch(seed=6), torch.zeros(10, 7), seed=6), STEP, loss_spec())
    before = scorer.score(batch)
    assert scorer.load_weights(g.get_weights()) == len(dict(scorer.model.named_parameters()))
    after = scorer.score(batch)
    torch.testing.assert_close(after, g.compute_logprobs(batch), atol=1e-5, rtol=0)
    assert not torch.allclose(before, after)  # the group has trained, so the refresh changed something
    with pytest.raises(KeyError, match="missing"):
        scorer.load_weights(g.get_weights()[1:])


def test_scorer_topk_at_k_equal_v_holds_the_sampled_tokens_logprob_at_its_id(model_dir):
    """The top-k comes from the same positions as the sampled-token log-probs: at k = V the
    sampled token's log-prob appears at its own id, and the k log-probs sum to 1."""
    from actors.scorer import Scorer

    batch = make_batch(seed=7)
    probe = Scorer("teacher", model_dir, micro_batch_tokens=20)
    vocab = probe.info()["vocab_size"]
    logp, top = Scorer("teacher", model_dir, micro_batch_tokens=20, top_k=vocab).score(batch)
    on = batch.response_mask.bool()
    torch.testing.assert_close(top.logp.exp().sum(-1)[on], torch.ones(int(on.sum())), atol=1e-5, rtol=0)
    at_token = top.logp.gather(-1, top.ids.long().argsort(-1).gather(-1, batch.response_ids[..., None])).squeeze(-1)
    torch.testing.assert_close(at_token[on], logp[on], atol=1e-5, rtol=0)
    torch.testing.assert_close(logp, probe.score(batch), atol=1e-6, rtol=0)


@pytest.mark.runtime
def test_old_logprobs_from_the_training_forward_equal_a_separate_pass(group):
    """K = 0, one update per batch: taking "old" from the training forward (no extra pass) gives the
    same parameters and metrics as computing it with compute_logprobs first (today's path)."""
    import dataclasses

    g, fresh = group
    cfg, terms = loss_spec()
    results = []
    for from_forward in (False, True):
        g.load_checkpoint(fresh, tag="fresh")
        batch = make_batch(seed=4)
        batch.logprobs["reference"] = torch.zeros_like(batch.response_mask)
        if not from_forward:
            batch.logprobs["old"] = g.compute_logprobs(batch)
        metrics = g.train(batch, STEP, (dataclasses.replace(cfg, old_from_forward=from_forward), terms))
        results.append((metrics, weights(g)))
    (m_sep, w_sep), (m_fwd, w_fwd) = results
    assert m_fwd["actor/ratio_mean"] == 1.0 and m_fwd["actor/clip_frac"] == 0.0
    for key in ("loss/total", "loss/policy", "div/kl_ref", "trainer/grad_norm"):
        assert m_fwd[key] == pytest.approx(m_sep[key], rel=1e-5, abs=1e-7), key
    for name, value in w_fwd.items():
        torch.testing.assert_close(value, w_sep[name], atol=1e-6, rtol=0, msg=name)


# Last: under ZeRO-3 a NaN loss stops the group, so no test of the shared fixture may follow it.
@pytest.mark.runtime
def test_nonfinite_loss_skips_the_update_without_leaking_into_the_next(group, model_dir):
    """A NaN in one row (on one rank) skips the whole update: parameters and Adam state unchanged,
    and the next clean update equals a single-process AdamW step from the initial weights. ZeRO-3
    stops with a clear error instead (it would leak the dropped gradients into the next update).
    Kept last in this file: it ends the ZeRO-3 group."""
    g, fresh = group
    g.load_checkpoint(fresh, tag="fresh")
    before = weights(g)
    stage = g.zero_stage
    from rlplat.modeling import load_causal_lm, response_logprobs

    with torch.no_grad():
        logp0 = response_logprobs(load_causal_lm(model_dir), make_batch(seed=1), 10_000)
    poisoned = with_roles(make_batch(seed=1), logp0, seed=1)
    poisoned.advantages[3] = float("nan")
    if stage == 3:  # runs last for this group: the failure stops the group
        with pytest.raises(Exception, match="cannot be skipped safely"):
            g.train(poisoned, STEP, loss_spec())
        return
    metrics = g.train(poisoned, STEP, loss_spec())
    assert metrics["trainer/skipped_nonfinite"] == 1.0 and metrics["trainer/nonfinite_micro_batches"] >= 1
    after = weights(g)
    assert all(torch.equal(after[k], before[k]) for k in before)

    clean = with_roles(make_batch(seed=1), logp0, seed=1)
    metrics = g.train(clean, STEP, loss_spec())
    assert metrics["trainer/skipped_nonfinite"] == 0.0
    ref_params, _, _ = reference_update(model_dir, clean)
    for name, value in weights(g).items():
        torch.testing.assert_close(value, ref_params[name].detach(), atol=1e-5, rtol=0, msg=name)


@pytest.mark.runtime
def test_cosine_warmup_lrs_follow_the_formula_and_resume_exactly(ray_cluster, model_dir, tmp_path):
    """ZeRO-2, 2 ranks: the learning rate of each update is ``lr * LRSchedule(s)`` for a cosine schedule
    with warmup; restoring a Nash-MP snapshot does not rewind the schedule; a checkpoint loaded
    into a new group continues with the next update's rate and the same parameters and Adam state."""
    pytest.importorskip("deepspeed")
    from actors.trainer import TrainerGroup
    from rlplat import lr_schedules

    cfg = RunConfig()
    cfg.trainer.zero_stage, cfg.trainer.lr, cfg.trainer.micro_batch_tokens = 2, LR, MICRO_BATCH_TOKENS
    # S = 6 updates (one per step), 2 of them warmup, cosine down to 0.1 * lr.
    cfg.trainer.max_steps, cfg.trainer.lr_scheduler, cfg.trainer.warmup_steps, cfg.trainer.min_lr_ratio = 6, "cosine", 2, 0.1
    schedule = lr_schedules.from_config(cfg)
    assert (schedule.kind, schedule.total, schedule.warmup, schedule.floor) == ("cosine", 6, 2, 0.1)
    expected = [LR * schedule(s) for s in range(6)]
    assert len(set(expected[1:])) == 4  # updates 1 and 2 are both at the peak; the others differ
    batch = with_roles(make_batch(seed=6), torch.zeros(10, 7), seed=6)

    def new_group(name: str) -> "TrainerGroup":
        return TrainerGroup(cfg, model_dir, 2, ResourcesConfig(trainer_cpus=0.5), temperature=1.0, name_prefix=name)

    def update(g) -> float:
        return g.train(batch, 0, loss_spec())["trainer/lr"]

    g = new_group("test-lr-a")
    try:
        lrs = [update(g), update(g)]  # warmup: lr / 2, lr
        g.snapshot_state()
        lrs.append(update(g))  # update 2
        g.restore_state()  # Nash-MP's pi_k: parameters and Adam state back, the count of updates taken not
        lrs.append(update(g))  # update 3, not update 2 again
        g.save_checkpoint(str(tmp_path), tag="resume")
        lr_uninterrupted = update(g)  # update 4 without a restart
        uninterrupted = weights(g)
    finally:
        g.shutdown()
    h = new_group("test-lr-b")
    try:
        h.load_checkpoint(str(tmp_path), tag="resume")
        lrs.append(update(h))  # update 4 after the restart
        resumed = weights(h)
        lrs.append(update(h))  # update 5, the last planned one
    finally:
        h.shutdown()
    assert lrs == pytest.approx(expected, rel=1e-12, abs=0)
    assert lrs[4] == lr_uninterrupted
    for name, value in resumed.items():
        assert torch.equal(value, uninterrupted[name]), name  # same state, same rate: the same update
