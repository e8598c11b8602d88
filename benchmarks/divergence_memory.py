"""Peak memory and time of full-distribution divergences: naive vs chunked, forward + backward.

Two comparisons:

* dense teacher logits (default):
  naive   = log_softmax of both [N, V] logits at once and the formula, differentiated by autograd
            (what one writes without thinking: autograd keeps several [N, V] tensors alive).
  chunked = rlplat.divergences.get(name, chunk_size=...), which processes chunk_size positions at a
            time in the forward and recomputes them in the backward.
* the training path, teacher top-k (``--teacher-topk K``): the inputs are the student's logits
  [N, V] and the teacher's ``TopK`` [N, k] (what the teacher scorer sends), the output the loss.
  naive   = a dense teacher distribution [N, V] built from the TopK (the k probabilities at their
            ids, the tail's mass spread over the other ids in proportion to the student's,
            detached: the one dense teacher whose full divergence and gradient equal the top-k +
            tail term's, so the two variants must agree) and the formula by autograd, token mean.
  trainer = ``rlplat.losses.policy_loss(..., logits=)`` with one term {divergence: name, anchor:
            teacher, coef 1, mask all} under ``token-mean`` and no surrogate: what a trainer rank
            runs (``full_term_values`` -> ``topk_divergence(support="tail")``, chunked). The
            rank's own log-probs are not part of the measure (zeros, no grad): they cost the same
            for every loss.

Memory is measured on CPU, where torch's allocations are plain malloc/mmap that tracemalloc does
not see and torch keeps no allocator statistics: each variant runs in a fresh subprocess whose
glibc malloc is told to serve every block over 128 KiB by mmap and to hand it back on free
(``MALLOC_MMAP_THRESHOLD_``; by default glibc raises that threshold adaptively and keeps freed
buffers resident, so RSS would measure the allocator's caching, not the live tensors). The
process allocates its inputs (policy logits with requires_grad and anchor logits, [N, V]
float32), resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), notes its resident set
size, runs one forward + backward and reports ``VmHWM - RSS before``: the peak extra memory, which
includes the [N, V] gradient of the logits that both variants must produce. Time is measured in
another fresh subprocess with the default allocator: the best (minimum) wall time of
``--repeats`` forward + backward passes after one warm-up; the minimum because other load on the
machine only ever adds time.

    python benchmarks/divergence_memory.py                # N = 4 x 256 positions, V = 32k and 128k
    python benchmarks/divergence_memory.py --teacher-topk 64,256 --vocabs 131072   # the training path
    python benchmarks/divergence_memory.py --smoke        # tiny, in-process, a few seconds (CI)

Before measuring, each subprocess runs its variant once on a tiny input, so the first call's
one-off allocations (kernels, thread pools) are not counted as the loss's memory.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import rlplat.divergences as D  # noqa: E402
from rlplat.batch import Batch  # noqa: E402
from rlplat.divergences.topk import TopK, teacher_topk  # noqa: E402
from rlplat.losses import DivergenceTerm, PolicyLossConfig, policy_loss  # noqa: E402
from rlplat.schedules import CoefSchedule  # noqa: E402

DIVERGENCES = ("full_forward_kl", "full_reverse_kl", "full_jsd")
TOPK_VARIANTS = ("naive_topk", "trainer")  # the training-path comparison (--teacher-topk)
MIB = 1024 * 1024


def naive(name: str, logits: torch.Tensor, anchor_logits: torch.Tensor) -> torch.Tensor:
    """Reference implementation materialising [N, V] log-probs of both distributions."""
    return _naive_kernel(name, torch.log_softmax(logits, -1), torch.log_softmax(anchor_logits.detach(), -1))


def naive_topk(name: str, logits: torch.Tensor, teacher: TopK) -> torch.Tensor:
    """Token-mean loss from a dense teacher [N, V] built from ``teacher`` (module docstring) and the
    naive formula: what one writes by densifying the top-k. Equals the top-k + tail term."""
    s = torch.log_softmax(logits, -1)
    sd = s.detach()
    tail_lse = torch.logsumexp(sd.scatter(-1, teacher.ids, float("-inf")), -1, keepdim=True)  # log S_tail
    t = (sd - tail_lse + teacher.tail_logp[:, None]).scatter_(-1, teacher.ids, teacher.logp)
    return _naive_kernel(name, s, t).mean()


def _naive_kernel(name: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if name == "full_forward_kl":
        return (t.exp() * (t - s)).sum(-1)
    if name == "full_reverse_kl":
        return (s.exp() * (s - t)).sum(-1)
    beta = 0.5  # full_jsd's default
    m = torch.logaddexp(t + math.log(beta), s + math.log1p(-beta))
    return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    """The peak RSS since the last ``_reset_peak`` (VmHWM), or since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _reset_peak() -> bool:
    """Reset the peak RSS to the current RSS (Linux: "5" to /proc/self/clear_refs). Why: otherwise an
    earlier high-water mark (imports, making the inputs, pages the kernel since reclaimed) can hide
    the peak being measured."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _inputs(positions: int, vocab: int, seed: int = 0):
    torch.manual_seed(seed)
    logits = torch.randn(positions, vocab).mul_(3.0).requires_grad_(True)
    anchor = torch.randn(positions, vocab).mul_(3.0)
    return logits, anchor


def _topk_inputs(positions: int, vocab: int, k: int, seed: int = 0):
    """Student logits [N, V] (requires grad) and a teacher ``TopK`` [N, k] taken from random teacher
    logits 64 positions at a time, so that no second [N, V] tensor ever exists (it would raise the
    high-water mark the peak is measured above)."""
    torch.manual_seed(seed)
    logits = torch.randn(positions, vocab).mul_(3.0).requires_grad_(True)
    g = torch.Generator().manual_seed(seed + 1)
    parts = [teacher_topk(torch.randn(min(64, positions - lo), vocab, generator=g).mul_(3.0), k)
             for lo in range(0, positions, 64)]
    return logits, TopK(*(torch.cat(x) for x in zip(*parts)))


def trainer_loss(name: str, chunk_size):
    """``fn(logits [N, V], teacher TopK [N]) -> loss``: policy_loss with one full term, as a rank calls it."""
    params = {} if chunk_size is None else {"chunk_size": chunk_size}
    terms = [DivergenceTerm(name="kd", divergence=name, params=params, anchor="teacher",
                            coef=CoefSchedule(kind="constant", value=1.0), mask="all")]
    cfg = PolicyLossConfig(surrogate=False, agg="token-mean")

    def fn(logits: torch.Tensor, teacher: TopK) -> torch.Tensor:
        n, vocab = logits.shape
        rows = 4 if n % 4 == 0 else 1
        shape = (rows, n // rows)
        batch = Batch(prompt_ids=torch.ones(rows, 1, dtype=torch.long), prompt_mask=torch.ones(rows, 1, dtype=torch.long),
                      response_ids=torch.zeros(shape, dtype=torch.long), response_mask=torch.ones(shape, dtype=logits.dtype),
                      group_ids=torch.arange(rows), advantages=torch.zeros(rows, dtype=logits.dtype),
                      topk={"teacher": TopK(*(x.reshape(*shape, *x.shape[1:]) for x in teacher))})
        loss, _ = policy_loss(logits.new_zeros(shape), batch, cfg, terms, step=0, logits=logits.view(*shape, vocab))
        return loss

    return fn


def _fn(variant: str, name: str, chunk_size):
    if variant == "naive_topk":
        return lambda z, teacher: naive_topk(name, z, teacher)
    if variant == "trainer":
        return trainer_loss(name, chunk_size)
    return (lambda z, za: naive(name, z, za)) if variant == "naive" else D.get(name, chunk_size=chunk_size)


def _make_inputs(variant: str, positions: int, vocab: int, top_k):
    return _topk_inputs(positions, vocab, top_k) if variant in TOPK_VARIANTS else _inputs(positions, vocab)


def _step(fn, logits, anchor):
    logits.grad = None
    values = fn(logits, anchor)
    values.sum().backward()
    return values.detach()


def measure_memory(variant: str, name: str, positions: int, vocab: int, chunk_size, top_k=None) -> dict:
    """Peak extra RSS of one forward + backward; meaningful as the first thing a fresh process does."""
    fn = _fn(variant, name, chunk_size)
    if variant in TOPK_VARIANTS:
        _step(fn, *_make_inputs(variant, 8, 64, min(top_k, 64)))  # warm-up: one-off allocations
    logits, anchor = _make_inputs(variant, positions, vocab, top_k)
    reset = _reset_peak()
    rss_before, maxrss_before = _rss_bytes(), _maxrss_bytes()
    values = _step(fn, logits, anchor)
    maxrss_after = _maxrss_bytes()
    return {
        "peak_extra_mib": (maxrss_after - rss_before) / MIB,
        # Below the earlier high-water mark the peak cannot be seen: flag it instead of guessing.
        "peak_reliable": reset or maxrss_after > maxrss_before,
        "checksum": float(values.double().sum()),
        "grad_checksum": float(logits.grad.double().abs().sum()),
    }


def measure_time(variant: str, name: str, positions: int, vocab: int, chunk_size, repeats: int, top_k=None) -> dict:
    """Best seconds of ``repeats`` forward + backward passes after one warm-up."""
    logits, anchor = _make_inputs(variant, positions, vocab, top_k)
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
    if variant in TOPK_VARIANTS:
        cmd += ["--teacher-topk", str(args.top_k)]
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
    p.add_argument("--teacher-topk", default=None,
                   help="comma-separated k: compare the training path (policy_loss with the teacher's TopK) with a "
                        "dense teacher, instead of dense logits")
    p.add_argument("--worker", choices=("naive", "chunked") + TOPK_VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--measure", choices=("memory", "time"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = args.divergences.split(",")
    unknown = sorted(set(names) - set(DIVERGENCES))
    if unknown:
        p.error(f"--divergences: no naive reference for {', '.join(unknown)}; choose from {', '.join(DIVERGENCES)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    vocabs = [int(v) for v in args.vocabs.split(",")]

    ks = [int(k) for k in args.teacher_topk.split(",")] if args.teacher_topk else []
    if args.worker:
        top_k = ks[0] if ks else None
        if args.measure == "memory":
            res = measure_memory(args.worker, names[0], args.positions, vocabs[0], args.chunk_size, top_k)
        else:
            res = measure_time(args.worker, names[0], args.positions, vocabs[0], args.chunk_size, args.repeats, top_k)
        print(json.dumps(res))
        return 0
    if ks:
        return _main_topk(args, names, vocabs, ks)

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


def compare_topk(args: argparse.Namespace, name: str, vocab: int, k: int) -> dict:
    """Both training-path variants at (name, vocab, k), each in fresh subprocesses; raises if they disagree."""
    args.top_k = k
    res = {}
    for v in TOPK_VARIANTS:
        res[v] = _in_subprocess(args, "memory", v, name, vocab)
        if args.repeats:
            res[v].update(_in_subprocess(args, "time", v, name, vocab))
    n, t = res["naive_topk"], res["trainer"]
    for key in ("checksum", "grad_checksum"):
        if abs(n[key] - t[key]) > 1e-4 * max(1.0, abs(n[key])):
            raise SystemExit(f"{name} V={vocab} k={k}: naive and trainer disagree on {key}: {n[key]} vs {t[key]}")
    res["mem_ratio"] = t["peak_extra_mib"] / max(n["peak_extra_mib"], 1e-9)
    return res


def _main_topk(args: argparse.Namespace, names, vocabs, ks) -> int:
    print(f"training path: policy_loss(logits [N, V], teacher TopK [N, k]) vs a dense teacher [N, V] and the naive "
          f"formula; N = {args.positions}, float32, forward + backward, torch threads {torch.get_num_threads()}; "
          f"peak = extra RSS over the inputs (includes the [N, V] logits gradient)")  # fmt: skip
    header = (f"{'divergence':16} {'V':>7} {'k':>4} {'[N,V] MiB':>9} | {'naive MiB':>9} {'trainer MiB':>11} "
              f"{'mem ratio':>9} | {'naive s':>8} {'trainer s':>9} {'time ratio':>10}")
    print(header)
    print("-" * len(header))
    for name in names:
        for vocab in vocabs:
            for k in ks:
                res = compare_topk(args, name, vocab, k)
                n, t = res["naive_topk"], res["trainer"]
                flag = "" if (n["peak_reliable"] and t["peak_reliable"]) else "  (peak below an earlier high-water mark)"
                times = (f"{n['time_s']:>8.3f} {t['time_s']:>9.3f} {t['time_s'] / n['time_s']:>10.2f}"
                         if args.repeats else f"{'-':>8} {'-':>9} {'-':>10}")
                print(f"{name:16} {vocab:>7} {k:>4} {args.positions * vocab * 4 / MIB:>9.0f} | "
                      f"{n['peak_extra_mib']:>9.0f} {t['peak_extra_mib']:>11.0f} {res['mem_ratio']:>9.3f} | {times}{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
