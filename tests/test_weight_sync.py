"""Collective weight sync (``rollout.weight_sync=collective``): the bucket plan, the gloo
transfer group between real processes, and — with real Ray, DeepSpeed and vLLM/HF engines —
that engines end up holding the trainer's weights while the driver never holds them."""
from __future__ import annotations

import multiprocessing as mp
import time

from pathlib import Path

import pytest
import torch

from actors.rollout.buckets import ParamSpec, pack_bucket, plan_buckets, unpack_bucket
from actors.rollout.transfer_group import GroupAddress, TransferGroup
from rlplat.config import ConfigError
from tests.conftest import free_port

MB = 1 << 20


# ============================================================================ the bucket plan
def _specs():
    return [
        ParamSpec("embed", torch.float32, (100, 64)),      # 25600 B
        ParamSpec("a.weight", torch.float32, (64, 64)),    # 16384 B
        ParamSpec("a.bias", torch.float32, (64,)),         # 256 B
        ParamSpec("b.weight", torch.bfloat16, (64, 64)),   # 8192 B: dtype change closes the bucket
        ParamSpec("b.scale", torch.bfloat16, ()),          # scalar
        ParamSpec("big", torch.float32, (300, 100)),       # 120000 B > the limit: alone
        ParamSpec("c.weight", torch.float32, (10, 10)),
    ]


def test_plan_buckets_preserves_order_bounds_size_and_keeps_one_dtype():
    limit = 30000
    buckets = plan_buckets(_specs(), limit)
    assert [p for b in buckets for p in b.params] == _specs()  # order preserved, nothing lost
    for b in buckets:
        assert all(p.dtype == b.dtype for p in b.params)
        assert b.nbytes <= limit or len(b.params) == 1
        assert b.nbytes == sum(p.nbytes for p in b.params)
    assert [b.names for b in buckets] == [["embed"], ["a.weight", "a.bias"], ["b.weight", "b.scale"], ["big"],
                                          ["c.weight"]]
    # A bucket closes only when the next parameter would not fit (or changes dtype).
    assert [b.names for b in plan_buckets(_specs(), 10**9)] == [["embed", "a.weight", "a.bias"],
                                                               ["b.weight", "b.scale"], ["big", "c.weight"]]
    assert all(len(b.params) == 1 for b in plan_buckets(_specs(), 1))
    with pytest.raises(ValueError, match="bucket_bytes"):
        plan_buckets(_specs(), 0)


def _tensors(specs, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s.shape, generator=g).to(s.dtype) for s in specs]


def test_pack_unpack_round_trip_is_bit_exact_including_bfloat16():
    specs = _specs()
    tensors = dict(zip((s.name for s in specs), _tensors(specs)))
    tensors["a.weight"] = tensors["a.weight"].t().contiguous().t()  # a non-contiguous source
    for bucket in plan_buckets(specs, 30000):
        flat = pack_bucket(bucket, [tensors[n] for n in bucket.names])
        assert flat.dtype == bucket.dtype and flat.shape == (bucket.numel,)
        for name, view in unpack_bucket(bucket, flat):
            want = tensors[name]
            assert view.dtype == want.dtype and view.shape == want.shape
            # Compare the bits: a conversion through float32 would still pass torch.equal.
            assert torch.equal(view.reshape(-1).view(torch.uint8), want.contiguous().reshape(-1).view(torch.uint8))
        assert unpack_bucket(bucket, flat)[0][1].data_ptr() == flat.data_ptr()  # views, no copy


def test_pack_bucket_refuses_tensors_that_disagree_with_the_plan():
    bucket = plan_buckets(_specs()[:2], 10**9)[0]
    a, b = _tensors(_specs()[:2])
    with pytest.raises(ValueError, match="'a.weight'"):
        pack_bucket(bucket, [a, b[:10]])
    with pytest.raises(ValueError, match="'a.weight'"):
        pack_bucket(bucket, [a, b.double()])
    with pytest.raises(ValueError, match="2 parameters got 1"):
        pack_bucket(bucket, [a])
    with pytest.raises(ValueError, match="needs"):
        unpack_bucket(bucket, torch.zeros(3))


# ============================================================================ the gloo group
def _receiver(address, rank, plan, queue):
    group = TransferGroup(address, rank, torch.device("cpu"), "127.0.0.1")
    got = {name: t.clone() for _, named in group.receive(plan) for name, t in named}
    group.close()
    queue.put((rank, {name: _bytes(t) for name, t in got.items()}))


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def test_transfer_group_broadcasts_every_bucket_to_every_receiver_between_processes():
    """Rank 0 and two receiver processes over a real gloo group: every receiver gets every
    parameter's bytes (several buckets, two in flight, bfloat16 included)."""
    specs = _specs()
    plan = plan_buckets(specs, 30000)
    tensors = dict(zip((s.name for s in specs), _tensors(specs, seed=1)))
    address = GroupAddress("127.0.0.1", free_port(), world_size=3, timeout_s=60)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_receiver, args=(address, r, plan, queue)) for r in (1, 2)]
    for p in procs:
        p.start()
    sender = TransferGroup(address, 0, torch.device("cpu"), "127.0.0.1")
    sent = sum(sender.send_bucket(b, [tensors[n] for n in b.names]) for b in plan)
    sender.flush()
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    sender.close()
    assert sent == sum(s.nbytes for s in specs)
    for rank in (1, 2):
        assert sorted(results[rank]) == sorted(tensors)
        for name, t in tensors.items():
            assert results[rank][name] == _bytes(t), (rank, name)


def test_transfer_group_refuses_a_rank_outside_the_group():
    with pytest.raises(ValueError, match="outside"):
        TransferGroup(GroupAddress("127.0.0.1", 1, world_size=2), 2, torch.device("cpu"), "127.0.0.1")


# ============================================================================ in-place updates
def test_in_place_refusal_names_what_needs_vllms_layerwise_reload():
    """Unquantized layers with their weights kept load in place; anything else (quantization, an
    fp8 KV cache, a quantized layer, a weight freed after packing, a model-level post-load step)
    takes vLLM's layerwise reload, and the refusal names why."""
    from types import SimpleNamespace

    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    from actors.rollout.vllm_transfer import in_place_refusal

    def layer(method, weight_shape=(4, 4)):
        m = torch.nn.Module()
        m.weight = torch.nn.Parameter(torch.zeros(weight_shape), requires_grad=False)
        m.quant_method = method
        return m

    def model(**layers):
        root = torch.nn.Module()
        for name, m in layers.items():
            root.add_module(name, m)
        root.add_module("norm", torch.nn.LayerNorm(4))  # no quant_method: never a reason
        return root

    plain, cache = SimpleNamespace(quantization=None), SimpleNamespace(cache_dtype="auto")
    good = model(qkv=layer(UnquantizedLinearMethod()), lm_head=layer(UnquantizedEmbeddingMethod()))
    assert in_place_refusal(good, plain, cache) is None
    assert in_place_refusal(good, SimpleNamespace(quantization="fp8"), cache) == "quantization=fp8"
    assert in_place_refusal(good, plain, SimpleNamespace(cache_dtype="fp8")) == "kv_cache_dtype=fp8"
    assert in_place_refusal(model(qkv=layer(object())), plain, cache) == "qkv: object"
    freed = model(qkv=layer(UnquantizedLinearMethod(), weight_shape=(0,)))
    assert in_place_refusal(freed, plain, cache) == "qkv: its weight was not kept after loading"
    good.process_weights_after_loading = lambda: None
    assert "model-level post-load step" in in_place_refusal(good, plain, cache)


_TIED_SCRIPT = r"""
import json, os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
import torch
path, mode = sys.argv[1], sys.argv[2]
if mode == "in place":
    from actors.rollout import vllm_transfer  # keeps CPU linear weights: before the model loads
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from vllm import LLM, SamplingParams

llm = LLM(model=path, dtype="float32", enforce_eager=True, seed=0, max_model_len=64, kv_cache_memory_bytes=16 << 20)
worker = llm.llm_engine.model_executor.driver_worker.worker
model = worker.model_runner.model
torch.manual_seed(0)
new = [(k, v + 0.05 * torch.randn_like(v)) for k, v in load_file(os.path.join(path, "model.safetensors")).items()]
seq = [1, 5, 7, 9, 11, 13]
params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)

def engine_logprobs():
    plp = llm.generate([{"prompt_token_ids": seq}], params, use_tqdm=False)[0].prompt_logprobs
    return torch.tensor([plp[k][seq[k]].logprob for k in range(1, len(seq))])

out = {}
if mode == "in place":
    from actors.rollout.vllm_layers import PostLoadLayers
    out["refusal"] = vllm_transfer.in_place_refusal(model, worker.model_config, worker.cache_config)
    PostLoadLayers(model).process(model.load_weights(new))
else:
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(new), "is_checkpoint_format": True})
    reload_only = engine_logprobs()
    from actors.rollout.vllm_layers import reprocess_tied_layers
    llm.collective_rpc(reprocess_tied_layers)
got = engine_logprobs()
hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
hf.load_state_dict(dict(new), strict=False)
with torch.no_grad():
    lp = hf(torch.tensor([seq])).logits[0].log_softmax(-1)
truth = torch.stack([lp[k - 1, seq[k]] for k in range(1, len(seq))])
out["diff"] = (got - truth).abs().max().item()
if mode != "in place":
    out["reload_only_diff"] = (reload_only - truth).abs().max().item()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.runtime
@pytest.mark.parametrize("mode", ["in place", "reload_weights"])
def test_a_tied_lm_head_follows_the_embedding_after_an_update(mode, tiny_models, tmp_path):
    """vLLM on CPU packs the LM head's weight apart from the embedding it is tied to. After new
    weights arrive, in place (the collective path: ``PostLoadLayers.process`` over what ``load_weights``
    wrote) or through ``reload_weights`` (the object-store path, whose layerwise reload misses the
    tied head, then ``reprocess_tied_layers``), the engine's log-probs equal HF's with the same
    weights. Without the re-pack the reload is off by more than 0.1 (the test can fail)."""
    import json
    import shutil
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    tied = tmp_path / "tied"
    shutil.copytree(tiny_models["policy"], tied)
    config = json.loads((tied / "config.json").read_text())
    (tied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    weights = load_file(str(tied / "model.safetensors"))
    del weights["lm_head.weight"]  # vLLM unties a checkpoint that has its own head
    save_file(weights, str(tied / "model.safetensors"), metadata={"format": "pt"})
    proc = subprocess.run([sys.executable, "-c", _TIED_SCRIPT, str(tied), mode], capture_output=True, text=True,
                          timeout=600, cwd=str(Path(__file__).resolve().parents[1]))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["diff"] < 1e-4, out
    if mode == "in place":
        assert out["refusal"] is None
    else:
        assert out["reload_only_diff"] > 0.1, out


# ============================================================================ config
def test_weight_sync_keys_are_validated():
    from rlplat.config import load_config

    assert load_config("configs/grpo.yaml", []).rollout.weight_sync == "collective"  # the default
    with pytest.raises(ConfigError, match="rollout.weight_sync='nccl'"):
        load_config("configs/grpo.yaml", ["rollout.weight_sync=nccl"])
    with pytest.raises(ConfigError, match="rollout.weight_sync_bucket_mb"):
        load_config("configs/grpo.yaml", ["rollout.weight_sync_bucket_mb=0"])


# ============================================================================ Ray + DeepSpeed + engines
class DriverSpy:
    """Wraps the driver's ``ray.put`` / ``ray.get`` and records every value holding an array or
    tensor larger than ``limit`` bytes: weights passing through the driver cannot go unseen."""

    def __init__(self, ray, limit: int) -> None:
        self.ray, self.limit = ray, limit
        self.real_put, self.real_get = ray.put, ray.get
        self.seen: list = []

    def _largest(self, obj, depth: int = 0) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.untyped_storage().nbytes()
        if hasattr(obj, "__array_interface__") and hasattr(obj, "nbytes"):  # numpy
            return int(obj.nbytes)
        if depth > 6 or isinstance(obj, (str, bytes, int, float, type(None))):
            return 0
        if isinstance(obj, dict):
            items = list(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            items = list(obj)
        elif hasattr(obj, "__dict__"):
            items = list(vars(obj).values())
        else:
            return 0
        return max((self._largest(x, depth + 1) for x in items), default=0)

    def _check(self, what: str, obj) -> None:
        n = self._largest(obj)
        if n > self.limit:
            self.seen.append((what, type(obj).__name__, n))

    def put(self, value, *args, **kwargs):
        self._check("ray.put", value)
        return self.real_put(value, *args, **kwargs)

    def get(self, refs, *args, **kwargs):
        out = self.real_get(refs, *args, **kwargs)
        self._check("ray.get", out)
        return out


def _probe_logprobs(ctx):
    p, r = ctx.probe.prompt_ids[0].tolist(), ctx.probe.response_ids[0].tolist()
    import ray

    return [torch.tensor(lp) for lp in ray.get([e.sequence_logprobs.remote(p, r) for e in ctx.engines.engines])]


@pytest.mark.runtime
def test_collective_sync_after_a_training_step_matches_the_trainer_without_the_driver(
        ray_cluster, tiny_models, tmp_path, monkeypatch):
    """vLLM engine, 2 DeepSpeed ranks (ZeRO-2), the controller in this process: after one GRPO step
    (generate, score, train, collective sync in 20 buckets) the engine's log-probs equal the
    trainer's within 1e-3 and moved away from the initial ones, and no value of more than 64 KiB
    (the weights are 20 MB) went through the driver's ray.put / ray.get. The object-store path,
    run under the same spy, is caught: the spy can fail."""
    import ray

    from launch.controller import Controller
    from launch.preflight import preflight, prepare_run_dir
    from rlplat import algorithms
    from rlplat.config import load_config
    from tests.test_e2e import SMALL

    cfg = load_config("configs/grpo.yaml", [*SMALL, f"trainer.output_dir={tmp_path / 'run'}", "trainer.max_steps=1",
                                            "trainer.lr=1e-2", "rollout.weight_sync_bucket_mb=1"])
    assert cfg.rollout.weight_sync == "collective" and cfg.rollout.backend == "vllm" and cfg.trainer.zero_stage == 2
    plan = algorithms.get(cfg.algorithm.name).plan(cfg)
    paths, tokenizer, data = preflight(cfg, plan)
    spy = DriverSpy(ray, limit=64 << 10)
    monkeypatch.setattr(ray, "put", spy.put)
    monkeypatch.setattr(ray, "get", spy.get)
    ctrl = Controller(cfg, plan, paths, prepare_run_dir(cfg), tokenizer, data)
    try:
        ctx, engines = ctrl.ctx, ctrl.ctx.engines
        assert engines.weight_sync.generation == 1  # formed at start
        before = _probe_logprobs(ctx)
        metrics = ctrl.loop.step(0)
        assert spy.seen == [], f"weights passed through the driver: {spy.seen}"
        assert metrics["sync/buckets"] == len(engines.weight_sync.plan) > 10
        assert metrics["sync/gbytes_per_s"] > 0 and metrics["sync/seconds"] > 0
        assert 0 < metrics["sync/engine_load_s"] <= metrics["sync/seconds"]  # measured in the engine
        assert metrics["sync/logprob_max_abs_diff"] < 1e-3
        trainer_lp = ctx.trainer.compute_logprobs(ctx.probe)[0]
        (after,) = _probe_logprobs(ctx)
        assert (after - trainer_lp).abs().max() < 1e-3
        assert (after - before[0]).abs().max() > 1e-2, "the engine still holds the initial weights"
        info = ray.get(engines.engines[0].info.remote())
        assert info["weight_version"] == ctx.weight_version == 1
        assert info["weight_update"] == "in place"  # CPU linear weights kept, re-packed after loading
        assert spy.seen == []

        # The spy can fail: the weights fetched onto the driver (what the object-store path did
        # before rank 0 packed them into the object store itself) are caught.
        ray.get(engines.weights_ref())
        assert any(what == "ray.get" for what, _, _ in spy.seen), spy.seen
        print(f"\ncollective sync: {metrics['sync/seconds'] * 1e3:.0f} ms in {metrics['sync/buckets']:.0f} buckets, "
              f"{metrics['sync/gbytes_per_s']:.2f} GB/s; weights fetched onto the driver caught by the spy: {spy.seen}")
    finally:
        monkeypatch.undo()
        ctrl.shutdown()


@pytest.mark.runtime
def test_zero3_collective_sync_reaches_two_engines_and_reforms_after_a_restart(ray_cluster, tiny_models):
    """ZeRO-3 over 2 ranks (every parameter partitioned, gathered one 256 KiB bucket at a time),
    two HF engines: both hold the trainer's weights after an update; an engine that Ray restarted
    (back at its initial weights, in no group) makes the next push re-form the group and the
    restarted engine gets the weights too."""
    import ray

    from actors.rollout import HFRolloutEngine
    from actors.rollout.weight_sync import CollectiveSync
    from actors.trainer import CallableLossFn, TrainerGroup
    from rlplat.batch import Batch
    from rlplat.config.schema import ResourcesConfig, RolloutConfig, RunConfig

    policy = tiny_models["policy"]
    cfg = RunConfig()
    cfg.trainer.zero_stage, cfg.trainer.lr = 3, 1e-2
    cfg.rollout = RolloutConfig(backend="hf", max_new_tokens=4, weight_sync_bucket_mb=0.25)
    cfg.trainer.deepspeed = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}
    trainer = TrainerGroup(cfg, policy, 2, ResourcesConfig(trainer_cpus=0.25), temperature=1.0,
                           name_prefix="wsync-zero3")
    engine_cls = ray.remote(num_cpus=0.25, max_restarts=1)(HFRolloutEngine)
    engines = [engine_cls.options(name=f"wsync-hf-{i}").remote(policy, policy, cfg.rollout, "float32", i)
               for i in range(2)]
    try:
        prompt, response = [1, 20, 21, 22, 23], [30, 31, 32, 33, 2]
        probe = Batch(prompt_ids=torch.tensor([prompt]), prompt_mask=torch.ones(1, 5, dtype=torch.long),
                      response_ids=torch.tensor([response]), response_mask=torch.ones(1, 5),
                      group_ids=torch.zeros(1, dtype=torch.long))

        def engine_lps():
            return [torch.tensor(x) for x in ray.get([e.sequence_logprobs.remote(prompt, response) for e in engines])]

        sync = CollectiveSync(trainer, engines, cfg.rollout)
        assert len(sync.plan) > 10
        initial = engine_lps()
        # One update that raises the probe's log-likelihood a lot (lr 1e-2).
        trainer.train(probe, 0, CallableLossFn(lambda logp, b, step, totals, entropy: (-(logp * b.response_mask).sum(), {})))
        stats = sync.push(1)
        assert stats.buckets == len(sync.plan) and stats.bytes == sum(b.nbytes for b in sync.plan)
        trainer_lp = trainer.compute_logprobs(probe)[0]
        for lp, init in zip(engine_lps(), initial):
            assert (lp - trainer_lp).abs().max() < 1e-3
            assert (lp - init).abs().max() > 1e-2
        assert sync.generation == 1

        old_pid = ray.get(engines[1].info.remote())["pid"]
        ray.kill(engines[1], no_restart=False)  # Ray restarts it with the initial weights
        # ray.kill is asynchronous: a call may still reach the old process, so wait for a new pid.
        while True:
            try:
                if ray.get(engines[1].info.remote())["pid"] != old_pid:
                    break
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                pass
            time.sleep(0.5)
        assert ray.get(engines[1].weight_group_address.remote()) is None
        assert (engine_lps()[1] - initial[1]).abs().max() < 1e-4
        sync.push(2)
        assert sync.generation == 2  # re-formed on a fresh port before anything was sent
        for lp in engine_lps():
            assert (lp - trainer_lp).abs().max() < 1e-3
        assert ray.get([e.info.remote() for e in engines])[1]["weight_version"] == 2
    finally:
        for e in engines:
            ray.kill(e)
        trainer.shutdown()


@pytest.mark.runtime
def test_cli_run_with_the_object_store_fallback(tmp_path, tiny_models, monkeypatch):
    """``rollout.weight_sync=object_store`` still trains and syncs; the default (collective) is what
    every other e2e run uses. Run in process under a driver spy: rank 0 packs the weights into the
    object store and the engines read them there; the driver never puts or gets more than 64 KiB."""
    from tests.test_e2e import assert_weights_arrived, train_in_process

    _, rows, spy = train_in_process(tmp_path, monkeypatch, "grpo", "rollout.weight_sync=object_store")
    assert spy.seen == [], f"weights passed through the driver: {spy.seen}"
    assert_weights_arrived(rows)
    assert all(r["sync/buckets"] == 1 and r["sync/gbytes_per_s"] > 0 for r in rows)
