"""``python -m launch.train --config configs/<algo>.yaml [key=value ...]``

Validates the config, the tokenizers and the data in seconds (``launch.preflight``; ``--check`` stops
there, printing the config and ``rlplat: --check ok``), builds the built-in tiny models if asked
for, then joins the Ray cluster (``ray job submit`` sets RAY_ADDRESS) or starts an embedded one on
127.0.0.1 and trains.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

CHECK_OK = "rlplat: --check ok"  # the last line of a passing --check


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m launch.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML file, e.g. configs/grpo.yaml")
    p.add_argument("--check", action="store_true",
                   help="run every check a real run makes before Ray starts (config, tokenizers, data), print the "
                        "resolved config, then exit; starts no Ray, writes no run directory, builds no model")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=5")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    # Before the imports below (torch, transformers: seconds on a busy machine): a first line at once.
    print(f"rlplat: {'checking' if args.check else 'starting'} {args.config}", flush=True)
    from actors import quiet
    from rlplat import algorithms
    from rlplat.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
        plan = algorithms.get(cfg.algorithm.name).plan(cfg)
        # Before a first run builds the built-in models (DeepSpeed's accelerator notice, HF's bars).
        quiet.apply(cfg.trainer.log_level)
        from launch.cluster import ignored_options
        from launch.preflight import preflight

        for warning in ignored_options(cfg.ray):
            print(f"rlplat: warning: {warning}", flush=True)
        # Without building the built-in models first: a mistake fails in seconds, not after the build.
        paths, tokenizer, data = preflight(cfg, plan, build=False)
        if not args.check and any(p.startswith("builtin:") for p in paths.values()):
            paths, tokenizer, data = preflight(cfg, plan, build=True)  # build them, then load what was built
    except ConfigError as exc:
        print(f"rlplat: config error: {exc}", file=sys.stderr)
        return 2
    if args.check:  # no run directory, no Ray: what a run would check up to here, it has checked
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        print(CHECK_OK, flush=True)
        return 0
    from launch.preflight import prepare_run_dir

    run_dir = prepare_run_dir(cfg)
    from launch.cluster import pin_to_loopback, start_ray

    pin_to_loopback(cfg.ray)
    from launch.controller import Controller  # imports ray

    cluster = start_ray(cfg.ray, cfg.trainer.log_level)
    from launch.placement import check_fits, cluster_nodes

    try:
        check_fits(cfg, plan, cluster_nodes(), joined=cluster.mode == "joined")
    except ConfigError as exc:
        print(f"rlplat: config error: {exc}", file=sys.stderr)
        return 2
    print(f"rlplat: {plan.name} on a {cluster.mode} Ray cluster; run directory {run_dir}", flush=True)
    if cluster.dashboard_url:  # jobs, named actors and their logs: README "Watching a run"
        print(f"rlplat: dashboard {cluster.dashboard_url}", flush=True)
    controller = Controller(cfg, plan, paths, run_dir, tokenizer, data)
    try:
        controller.run()
    finally:
        controller.shutdown()
    print(f"rlplat: done; metrics in {run_dir}/metrics.jsonl", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
