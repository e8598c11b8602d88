"""The policy trainer: DeepSpeed data-parallel ranks as Ray actors (``TrainerGroup``)."""
from actors.trainer.group import TrainerGroup, merge_rank_metrics, split_rows
from actors.trainer.rank import CallableLossFn, PolicyLossFn, RankMetrics, TrainerRank, resolve_loss

__all__ = [
    "TrainerGroup", "TrainerRank", "PolicyLossFn", "CallableLossFn", "RankMetrics",
    "resolve_loss", "split_rows", "merge_rank_metrics",
]
