"""``ScorerPool`` on a real local Ray cluster with the built-in tiny policy.

A pool of two scorers returns the one-scorer log-probs row for row; an actor killed the way a
crash kills it (Ray restarts it) is waited for, gets the pool's last weights back, and the scores
stay equal.
"""
from __future__ import annotations

import pytest
import torch

from rlplat.batch import Batch

pytestmark = pytest.mark.runtime


def make_batch(tokenizer, n: int = 10, seed: int = 0) -> Batch:
    """``n`` arithmetic prompts (left-padded) with responses of varying lengths (right-padded)."""
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for i in range(n):
        a, b = torch.randint(0, 100, (2,), generator=g).tolist()
        prompts.append(tokenizer.encode(f"{a}+{b}=", add_special_tokens=True))
        extra = torch.randint(4, 20, (int(torch.randint(0, 4, (1,), generator=g)),), generator=g).tolist()
        responses.append(tokenizer.encode(f" {a + b}", add_special_tokens=False) + extra + [tokenizer.eos_token_id])
    p, r = max(map(len, prompts)), max(map(len, responses))
    pad = tokenizer.pad_token_id
    return Batch(
        prompt_ids=torch.tensor([[pad] * (p - len(x)) + x for x in prompts]),
        prompt_mask=torch.tensor([[0] * (p - len(x)) + [1] * len(x) for x in prompts]),
        response_ids=torch.tensor([x + [pad] * (r - len(x)) for x in responses]),
        response_mask=torch.tensor([[1.0] * len(x) + [0.0] * (r - len(x)) for x in responses]),
        group_ids=torch.arange(n) // 2,
    )


@pytest.fixture(scope="module")
def policy(tiny_models):
    return tiny_models["policy"]


@pytest.fixture(scope="module")
def batch(policy):
    from transformers import AutoTokenizer

    return make_batch(AutoTokenizer.from_pretrained(policy))


def _pool(role, policy, n, **kw):
    """Each test uses its own role: a killed actor's name is freed asynchronously."""
    from actors.scorer_pool import ScorerPool

    pool = ScorerPool(role, policy, n, micro_batch_tokens=48, num_cpus=0.1, max_restarts=2, **kw)
    pool.ready()
    return pool


@pytest.fixture(scope="module")
def single(ray_cluster, policy, batch):
    pool = _pool("teacher", policy, 1)
    try:
        return pool.score(batch)
    finally:
        pool.kill()


def _perturbed(policy):
    """The tiny policy's parameters, each scaled by 0.9: other log-probs than the files give."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy)
    return [(n, p.detach() * 0.9) for n, p in model.named_parameters()]


def _info_after_restart(actor, old_pid: int, timeout_s: float = 300.0) -> dict:
    """``info()`` of ``actor`` once it answers from a process other than ``old_pid`` (Ray restarted it)."""
    import time

    import ray

    deadline = time.time() + timeout_s
    while True:
        try:
            info = ray.get(actor.info.remote())
            if info["pid"] != old_pid:
                return info
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError):
            pass
        if time.time() > deadline:
            raise TimeoutError(f"the actor was not restarted within {timeout_s} s")
        time.sleep(0.5)


# Float32 log-probs of other batch shapes differ by a few ulps of the logits (CPU GEMM blocking
# depends on the rows per forward; log-softmax of logits ~16 keeps their absolute error, ulp 1.9e-6;
# measured up to 9.5e-6): hence atol 2e-5. A wrong row or stale weights differ by far more.
def test_two_scorers_split_the_rows_and_return_the_single_scorer_logprobs(ray_cluster, policy, batch, single):
    pool = _pool("reference", policy, 2)
    try:
        assert {"scorer-reference-0", "scorer-reference-1"} <= set(ray_cluster.util.list_named_actors())
        pending = pool.score_async(batch)
        assert sorted(pending.parts) == [0, 1] and all(len(idx) for idx in pending.parts.values())
        got = pending.result()
        torch.testing.assert_close(got, single, atol=2e-5, rtol=0)
        assert (got[batch.response_mask == 0] == 0).all() and (got[batch.response_mask == 1] <= 0).all()
        torch.testing.assert_close(pool.score(batch.select([3])), single[[3]], atol=2e-5, rtol=0)  # 1 row, 2 actors
    finally:
        pool.kill()


def test_killed_scorer_is_restarted_with_the_last_weights_and_scores_stay_equal(ray_cluster, policy, batch, single):
    import ray

    pool = _pool("snapshot", policy, 2)
    try:
        pending = pool.score_async(batch)
        ray.kill(pool.actors[1], no_restart=False)  # mid-call, as a crash would
        torch.testing.assert_close(pending.result(), single, atol=2e-5, rtol=0)

        assert pool.load_weights(_perturbed(policy)) > 0
        loaded = pool.score(batch)
        assert (loaded - single).abs().max() > 1e-3  # the loaded weights score differently
        recoveries, pid = pool.recoveries, pool.info()[0]["pid"]
        ray.kill(pool.actors[0], no_restart=False)
        assert _info_after_restart(pool.actors[0], pid)["weights_version"] == 0  # back with the files' weights
        # The pool's call meets an actor that answers but holds other weights: it reloads, retries.
        torch.testing.assert_close(pool.score(batch), loaded, atol=2e-5, rtol=0)
        assert pool.recoveries == recoveries + 1
        assert [i["weights_version"] for i in pool.info()] == [1, 1]
    finally:
        pool.kill()


def test_scores_chained_on_pending_parts_equal_the_direct_scores_and_fall_back_after_a_failure(
        ray_cluster, policy, batch, single):
    """``score_rows_async`` on ObjectRefs of not-yet-made parts (as the rollout engines' outputs
    are): two actors each take a contiguous share of the 10 rows, the result equals one scorer's
    on the whole batch; when a part's producer failed, ``result`` scores the collected batch afresh."""
    import ray

    @ray.remote(num_cpus=0.1)
    def part(b, delay):
        import time

        time.sleep(delay)  # the scorer calls are submitted before the parts exist
        return b

    @ray.remote(num_cpus=0.1)
    def lost_part():
        raise RuntimeError("the engine that made this part died")

    pool = _pool("teacher", policy, 2)
    try:
        refs = [part.remote(batch.select(list(range(0, 4))), 1.0), part.remote(batch.select(list(range(4, 10))), 1.5)]
        pending = pool.score_rows_async(refs, len(batch))
        assert pending.ranges == [(0, 5), (5, 10)]  # actor 1 takes rows of both parts
        torch.testing.assert_close(pending.result(batch), single, atol=2e-5, rtol=0)

        failed = pool.score_rows_async([refs[0], lost_part.remote()], len(batch))
        torch.testing.assert_close(failed.result(batch), single, atol=2e-5, rtol=0)
        assert pool.recoveries == 0  # no scorer was lost: nothing to recover
    finally:
        pool.kill()


def test_killed_topk_scorer_is_restarted_and_the_pool_returns_the_same_topk(ray_cluster, policy, batch):
    """With ``top_k`` > 0 each actor's part is a (log-probs, TopK) pair: after an actor is killed
    mid-call the pool's recovery still returns, row for row, one in-process scorer's pair."""
    import ray

    from actors.scorer import Scorer

    k = 8
    want_logp, want = Scorer("teacher", policy, micro_batch_tokens=48, top_k=k).score(batch)
    pool = _pool("topk", policy, 2, top_k=k)
    try:
        pending = pool.score_async(batch)
        ray.kill(pool.actors[1], no_restart=False)  # mid-call, as a crash would
        logp, top = pending.result()
        assert pool.recoveries == 1  # the kill lands while the part (several micro-batches) is scored
        on = batch.response_mask.bool()
        torch.testing.assert_close(logp, want_logp, atol=2e-5, rtol=0)
        assert top.logp.shape == (len(batch), batch.response_ids.shape[1], k) and top.ids.dtype == torch.int32
        torch.testing.assert_close(top.logp[on], want.logp[on], atol=2e-5, rtol=0)
        assert torch.equal(top.ids[on], want.ids[on])
        torch.testing.assert_close(top.tail_logp[on], want.tail_logp[on], atol=2e-5, rtol=0)
        assert (top.logp[~on] == 0).all() and (top.ids[~on] == 0).all()
    finally:
        pool.kill()
