"""CLI: build tiny model directories.

    python -m rlplat.models.build --out DIR --size policy|teacher|... [--warm-start-steps N] [--seed S]
    python -m rlplat.models.build --cached SIZE [SIZE ...]

The first form builds one model into DIR and prints its build info (parameters, warm-start seconds,
held-out accuracy) as JSON. ``--cached`` fills the cache that ``builtin:tiny-<size>`` resolves through
(``$RLPLAT_CACHE/models``, else ``~/.cache/rlplat/models``) with the default build of each size, the
missing ones side by side (``ensure_tiny_models``), and prints one line per size with its path and
build seconds: CI's model-build stage, before the tests.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Sequence

from rlplat.models.tiny import BUILD_INFO_FILE, SIZES, build_tiny_model, ensure_tiny_models


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a tiny Llama model + character tokenizer locally.")
    parser.add_argument("--out", help="output directory (created; files overwritten)")
    parser.add_argument("--size", choices=SIZES.names(), default="policy")
    parser.add_argument("--warm-start-steps", type=int, default=None,
                        help="supervised arithmetic steps (default: the size's recipe; 0 = random init)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cached", nargs="+", choices=SIZES.names(), metavar="SIZE",
                        help=f"fill the built-in model cache with these sizes ({', '.join(SIZES.names())})")
    args = parser.parse_args(argv)
    if args.cached:
        start = time.perf_counter()
        for size, path in ensure_tiny_models(args.cached).items():
            with open(f"{path}/{BUILD_INFO_FILE}") as f:
                seconds = json.load(f)["warm_start_seconds"]
            print(f"builtin:tiny-{size}: {path} (warm start {seconds:.0f} s)", flush=True)
        print(f"built-in models ready in {time.perf_counter() - start:.0f} s", flush=True)
        return
    if not args.out:
        parser.error("--out is required (or --cached SIZE ...)")
    info = build_tiny_model(args.out, size=args.size, seed=args.seed, warm_start_steps=args.warm_start_steps)
    print(json.dumps(info, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
