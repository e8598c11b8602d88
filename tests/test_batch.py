"""PPO mini-batches of a Batch: whole groups, every row once per epoch, a shuffle per optimizer call."""
import torch

from rlplat.batch import Batch, minibatch_seed


def batch_of_groups(groups=6, per_group=3):
    b = groups * per_group
    return Batch(prompt_ids=torch.ones(b, 1, dtype=torch.long), prompt_mask=torch.ones(b, 1, dtype=torch.long),
                 response_ids=torch.ones(b, 2, dtype=torch.long), response_mask=torch.ones(b, 2),
                 group_ids=torch.arange(groups).repeat_interleave(per_group))


def test_mini_batches_hold_whole_groups_and_cover_each_epoch_once():
    batch = batch_of_groups()
    parts = batch.mini_batches(3, epochs=2, generator=torch.Generator().manual_seed(0))
    assert len(parts) == 6
    for epoch in (parts[:3], parts[3:]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(len(batch)))
        for rows in epoch:
            groups = batch.group_ids[rows].unique()
            assert (torch.isin(batch.group_ids, groups).sum() == len(rows)).item()


def test_each_update_of_a_step_shuffles_its_own_way_and_reproducibly():
    """Nash-MP takes several updates per step on one batch: they must not reuse one permutation."""
    batch = batch_of_groups(groups=12)
    order = lambda update: [r.tolist() for r in batch.mini_batches(4, 1, torch.Generator().manual_seed(  # noqa: E731
        minibatch_seed(0, step=5, update=update)))]
    assert order(0) == order(0)
    assert len({str(order(u)) for u in range(4)}) == 4
    assert minibatch_seed(0, 5, 1) != minibatch_seed(0, 6, 0) != minibatch_seed(1, 5, 0)
