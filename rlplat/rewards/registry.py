"""The registry of named reward functions (``reward.fn: <name>``) and their call type. Its own
module so that the built-ins (``rlplat.rewards.builtin``) register into it without importing the
package that imports them."""
from __future__ import annotations

from typing import Callable, Optional

from rlplat.registry import Registry

# fn(response, answer, prompt, **columns) -> reward
RewardFn = Callable[[str, Optional[str], str], float]
REWARDS: Registry[RewardFn] = Registry("reward function")
