"""CLI: build one tiny model directory.

    python -m rlplat.models.build --out DIR --size policy|teacher [--warm-start-steps N] [--seed S]

Prints the build info (parameters, warm-start seconds, held-out accuracy) as JSON.
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from rlplat.models.tiny import SIZES, build_tiny_model


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a tiny Llama model + character tokenizer locally.")
    parser.add_argument("--out", required=True, help="output directory (created; files overwritten)")
    parser.add_argument("--size", choices=SIZES.names(), default="policy")
    parser.add_argument("--warm-start-steps", type=int, default=None,
                        help="supervised arithmetic steps (default: the size's recipe; 0 = random init)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    info = build_tiny_model(args.out, size=args.size, seed=args.seed, warm_start_steps=args.warm_start_steps)
    print(json.dumps(info, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
