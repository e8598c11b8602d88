"""rlplat: the pure library of the platform (config schema, divergences, advantages, losses,
algorithms, rewards, data). Importing it never needs Ray, vLLM or DeepSpeed."""

__version__ = "0.1.0"
