"""Peak memory and time of full-distribution divergences: naive vs chunked, forward + backward.

naive   = log_softmax of both [N, V] logits at once and the formula, differentiated by autograd
          (what one writes without thinking: autograd keeps several [N, V] tensors alive).
chunked = rlplat.divergences.get(name, chunk_size=...), which processes chunk_size positions at a
          time in the forward and recomputes them in the backward.

Memory is measured on CPU, where torch's allocations are plain malloc/mmap that tracemalloc does
not see and torch keeps no allocator statistics: each variant runs in a fresh subprocess whose
glibc malloc is told to serve every block over 128 KiB by mmap and to hand it back on free
(``MALLOC_MMAP_THRESHOLD_``; by default glibc raises that threshold adaptively and keeps freed
buffers resident, so RSS would measure the allocator's caching, not the live tensors). The
process allocates its inputs (policy logits with requires_grad and anchor logits, [N, V]
float32), notes its resident set size, runs one forward + backward and reports
``ru_maxrss - RSS before``: the peak extra memory, which includes the [N, V] gradient of the
logits that both variants must produce. Time is measured in another fresh subprocess with the
default allocator: the best (minimum) wall time of ``--repeats`` forward + backward passes after
one warm-up; the minimum because other load on the machine only ever adds time.

    python benchmarks/divergence_memory.py                # N = 4 x 256 positions, V = 32k and 128k
    python benchmarks/divergence_memory.py --smoke        # tiny, in-process, a few seconds (CI)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import rlplat.divergences as D  # noqa: E402

DIVERGENCES = ("full_forward_kl", "full_reverse_kl", "full_jsd")
MIB = 1024 * 1024


def naive(name: str, logits: torch.Tensor, anchor_logits: torch.Tensor) -> torch.Tensor:
    """Reference implementation materialising [N, V] log-probs of both distributions."""
    s = torch.log_softmax(logits, -1)
    t = torch.log_softmax(anchor_logits.detach(), -1)
    if name == "full_forward_kl":
        return (t.exp() * (t - s)).sum(-1)
    if name == "full_reverse_kl":
        return (s.exp() * (s - t)).sum(-1)
    beta = 0.5  # full_jsd's default
    m = torch.logaddexp(t + torch.log(torch.tensor(beta)), s + torch.log(torch.tensor(1 - beta)))
    return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _inputs(positions: int, vocab: int, seed: int = 0):
    torch.manual_seed(seed)
    logits = torch.randn(positions, vocab).mul_(3.0).requires_grad_(True)
    anchor = torch.randn(positions, vocab).mul_(3.0)
    return logits, anchor


def _fn(variant: str, name: str, chunk_size):
    return (lambda z, za: naive(name, z, za)) if variant == "naive" else D.get(name, chunk_size=chunk_size)


def _step(fn, logits, anchor):
    logits.grad = None
    values = fn(logits, anchor)
    values.sum().backward()
    return values.detach()


def measure_memory(variant: str, name: str, positions: int, vocab: int, chunk_size) -> dict:
    """Peak extra RSS of one forward + backward; meaningful as the first thing a fresh process does."""
    logits, anchor = _inputs(positions, vocab)
    rss_before, maxrss_before = _rss_bytes(), _maxrss_bytes()
    values = _step(_fn(variant, name, chunk_size), logits, anchor)
    maxrss_after = _maxrss_bytes()
    return {
        "peak_extra_mib": (maxrss_after - rss_before) / MIB,
        # Below the earlier high-water mark the peak cannot be seen: flag it instead of guessing.
        "peak_reliable": maxrss_after > maxrss_before,
        "checksum": float(values.double().sum()),
        "grad_checksum": float(logits.grad.double().abs().sum()),
    }


def measure_time(variant: str, name: str, positions: int, vocab: int, chunk_size, repeats: int) -> dict:
    """Best seconds of ``repeats`` forward + backward passes after one warm-up."""
    logits, anchor = _inputs(positions, vocab)
    fn = _fn(variant, name, chunk_size)
    times = []
    for _ in range(1 + repeats):
        t0 = time.perf_counter()
        _step(fn, logits, anchor)
        times.append(time.perf_counter() - t0)
    return {"time_s": min(times[1:]) if repeats else times[0]}


def _in_subprocess(args: argparse.Namespace, measure: str, variant: str, name: str, vocab: int) -> dict:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", variant, "--measure", measure,
        "--divergences", name, "--positions", str(args.positions), "--vocabs", str(vocab),
        "--repeats", str(args.repeats),
    ]  # fmt: skip
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    if args.chunk_size is not None:
        cmd += ["--chunk-size", str(args.chunk_size)]
    env = dict(os.environ)
    if measure == "memory":
        env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--positions", type=int, default=4 * 256, help="B x T positions (default 4 x 256)")
    p.add_argument("--vocabs", default="32768,131072", help="comma-separated vocab sizes")
    p.add_argument("--divergences", default=",".join(DIVERGENCES))
    p.add_argument("--chunk-size", type=int, default=None, help="positions per chunk (default: automatic)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, in-process, checks the two variants agree")
    p.add_argument("--worker", choices=("naive", "chunked"), help=argparse.SUPPRESS)
    p.add_argument("--measure", choices=("memory", "time"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = args.divergences.split(",")
    unknown = sorted(set(names) - set(DIVERGENCES))
    if unknown:
        p.error(f"--divergences: no naive reference for {', '.join(unknown)}; choose from {', '.join(DIVERGENCES)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    vocabs = [int(v) for v in args.vocabs.split(",")]

    if args.worker:
        if args.measure == "memory":
            res = measure_memory(args.worker, names[0], args.positions, vocabs[0], args.chunk_size)
        else:
            res = measure_time(args.worker, names[0], args.positions, vocabs[0], args.chunk_size, args.repeats)
        print(json.dumps(res))
        return 0

    if args.smoke:
        args.positions, vocabs, args.repeats = 64, [2048], 1
        args.chunk_size = args.chunk_size or 8
        print("smoke run: tiny sizes in one process; the figures mean nothing, it checks that both variants agree")
    print(f"positions N = {args.positions}, float32, forward + backward, torch threads {torch.get_num_threads()}; "
          f"peak = extra RSS over the inputs (includes the [N, V] logits gradient)")  # fmt: skip
    header = (
        f"{'divergence':16} {'V':>7} {'[N,V] MiB':>9} | {'naive MiB':>9} {'chunked MiB':>11} {'mem ratio':>9} | "
        f"{'naive s':>8} {'chunked s':>9} {'time ratio':>10}"
    )
    print(header)
    print("-" * len(header))
    for name in names:
        for vocab in vocabs:
            res = {}
            for v in ("naive", "chunked"):
                if args.smoke:  # memory figures are noise at this size; the point is that it all runs and agrees
                    res[v] = measure_memory(v, name, args.positions, vocab, args.chunk_size)
                    res[v].update(measure_time(v, name, args.positions, vocab, args.chunk_size, args.repeats))
                else:
                    res[v] = _in_subprocess(args, "memory", v, name, vocab)
                    res[v].update(_in_subprocess(args, "time", v, name, vocab))
            n, c = res["naive"], res["chunked"]
            for key in ("checksum", "grad_checksum"):
                if abs(n[key] - c[key]) > 1e-4 * max(1.0, abs(n[key])):
                    raise SystemExit(f"{name} V={vocab}: naive and chunked disagree on {key}: {n[key]} vs {c[key]}")
            flag = "" if (n["peak_reliable"] and c["peak_reliable"]) else "  (peak below an earlier high-water mark)"
            print(
                f"{name:16} {vocab:>7} {args.positions * vocab * 4 / MIB:>9.0f} | {n['peak_extra_mib']:>9.0f} "
                f"{c['peak_extra_mib']:>11.0f} {c['peak_extra_mib'] / max(n['peak_extra_mib'], 1e-9):>9.3f} | "
                f"{n['time_s']:>8.3f} {c['time_s']:>9.3f} {c['time_s'] / n['time_s']:>10.2f}{flag}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
