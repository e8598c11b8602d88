"""An allocator failure in a micro-batch names the token budget to lower (a real, huge allocation)."""
import pytest
import torch

from actors.trainer.oom import MicroBatchOOM, budget_on_oom


def test_real_allocation_failure_names_the_budget():
    with pytest.raises(MicroBatchOOM, match=r"lower trainer.micro_batch_tokens \(now 4096\)") as err:
        with budget_on_oom("trainer.micro_batch_tokens", 4096, 3968):
            torch.empty(2**60)  # 8 EiB of float32: the CPU allocator refuses for real
    assert "3968 padded tokens" in str(err.value)


def test_other_errors_pass_through():
    with pytest.raises(ValueError):
        with budget_on_oom("trainer.micro_batch_tokens", 4096, 10):
            raise ValueError("not memory")
