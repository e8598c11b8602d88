"""One data-parallel DeepSpeed rank of the policy trainer (a plain class; ``group.py`` wraps it
in ``ray.remote``).

Gradient accumulation contract (see ``rlplat.losses``): every micro-batch loss is already
normalised by the GLOBAL counts of the whole mini-batch on all ranks and multiplied by
``world_size``; micro-batch gradients are summed on a rank and DeepSpeed averages them over
ranks, so one optimizer step sees exactly the gradient of the full mini-batch loss. DeepSpeed
is configured with ``gradient_accumulation_steps = 1`` and ``engine.backward(...,
scale_wrt_gas=False)``, so it never rescales the loss.

Collective discipline: ZeRO-3 all-gathers parameters in every forward and ZeRO-2/3 reduce
gradients in every backward, so all ranks must run the same number of passes. Each rank
all-reduces (MAX) its micro-batch count and runs zero-weight padding passes up to it.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from actors import quiet
from actors.trainer.oom import budget_on_oom
from rlplat.batch import Batch
from rlplat.config.schema import ModelConfig, TrainerConfig
from rlplat.losses import EXPLORE_KEY
from rlplat.lr_schedules import LRSchedule
from rlplat.modeling import load_causal_lm, micro_batch_forward, micro_batch_logprobs

Totals = Mapping[str, Any]  # component name -> rlplat.losses.LossTotals


# ============================================================================ loss plumbing
class PolicyLossFn:
    """Picklable ``rlplat.losses.policy_loss`` with its config and divergence terms bound.

    Any object with the same two methods can be passed to ``train_mini_batch`` instead:
    ``totals(batch, world_size)`` (global normalisers of the whole mini-batch) and
    ``__call__(logp, micro_batch, step, totals, entropy) -> (loss, metrics)``. One whose
    ``needs_logits`` is True is also given ``logits=`` (Float [B, R, V], the same forward's,
    divided by the temperature): full-distribution divergence terms need them. One whose
    ``entropy_grad`` is True is given the entropy with its gradient (the entropy bonus).
    """

    def __init__(self, cfg: Any, terms: Sequence[Any]):
        self.cfg = cfg
        self.terms = list(terms)
        self.needs_logits = any(getattr(t, "full", False) for t in self.terms)
        self.entropy_grad = bool(getattr(cfg, "entropy_coef", 0.0))

    def totals(self, batch: Batch, world_size: int) -> Dict[str, Any]:
        from rlplat.losses import loss_totals

        return loss_totals(batch, self.terms, world_size, self.cfg.rollout_correction)

    def component_tokens(self, batch: Batch) -> Dict[str, float]:
        """Tokens per loss component of a micro-batch: the weights of its mean-type metrics
        (plus ``EXPLORE_KEY``: exploration tokens before rollout correction masks any)."""
        from rlplat.losses import explore_tokens

        return {**{k: v.tokens for k, v in self.totals(batch, 1).items()}, EXPLORE_KEY: explore_tokens(batch)}

    def __call__(self, logp, batch, step, totals, entropy=None, logits=None):
        from rlplat.losses import policy_loss

        return policy_loss(logp, batch, self.cfg, self.terms, step, totals, entropy, logits=logits)


class CallableLossFn:
    """Adapter for a plain function ``fn(logp, batch, step, totals, entropy) -> (loss, metrics)``
    whose totals are ``{"policy": LossTotals of all response tokens}``."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def totals(self, batch: Batch, world_size: int) -> Dict[str, Any]:
        from rlplat.losses import LossTotals

        return {"policy": LossTotals.of(batch.loss_mask.float(), world_size)}

    def component_tokens(self, batch: Batch) -> Dict[str, float]:
        return {"policy": float(batch.loss_mask.sum())}

    def __call__(self, logp, batch, step, totals, entropy=None):
        return self.fn(logp, batch, step, totals, entropy)


LossSpec = Union[Tuple[Any, Sequence[Any]], PolicyLossFn, CallableLossFn, Callable]


def resolve_loss(spec: LossSpec) -> Any:
    """``(PolicyLossConfig, [DivergenceTerm])`` -> PolicyLossFn; an object with ``totals`` is
    kept; a bare callable is wrapped in CallableLossFn."""
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise ValueError(f"loss spec tuple must be (PolicyLossConfig, terms), got {len(spec)} items")
        return PolicyLossFn(spec[0], spec[1])
    if hasattr(spec, "totals") and callable(spec):
        return spec
    if callable(spec):
        return CallableLossFn(spec)
    raise TypeError(f"loss spec must be (PolicyLossConfig, terms) or a callable, got {type(spec).__name__}")


def _metric_weight(key: str, comp_tokens: Mapping[str, float], tokens: float) -> float:
    """Weight of a micro-batch's mean-type metric: the tokens (or other units) of the set it averages over."""
    if key.startswith("div/"):
        return comp_tokens.get(key[len("div/"):], tokens)
    if key.startswith("actor/"):
        return comp_tokens.get("policy", tokens)
    if key.startswith("rollout/"):  # rlplat.rollout_correction.metrics: over all exploration tokens
        return comp_tokens.get(EXPLORE_KEY, comp_tokens.get("policy", tokens))
    # ``<component>/<name>``: a mean over that component's units, when the loss counts it
    # (rlplat.pairs.PairLoss: ``rewards/*`` are means over pairs).
    return comp_tokens.get(key.split("/", 1)[0], tokens)


@dataclass
class RankMetrics:
    """What a rank returns from a step, before the group merges ranks.

    ``sums``: additive over micro-batches; summed here, averaged over ranks by the group
    (``loss/*`` contributions are pre-multiplied by world_size). ``weighted``: key -> [sum of
    value*weight, sum of weight]. ``stats``: rank-level facts (same on all ranks or maxed)."""

    sums: Dict[str, float]
    weighted: Dict[str, List[float]]
    stats: Dict[str, float]


# ============================================================================ the rank
def _skip_cpu_shm_comm_build() -> None:
    """On CPU, DeepSpeed's comm backend JIT-compiles a shared-memory all-reduce op (measured
    ~150 s on 2 cores, once per machine) that only ``inference_all_reduce`` (tensor-parallel
    inference) uses; training collectives go through torch.distributed/gloo either way."""
    import importlib

    # Not ``import deepspeed.comm.torch``: the package re-exports PyTorch as ``deepspeed.comm.torch``.
    backend_module = importlib.import_module("deepspeed.comm.torch")
    backend_module.build_shm_op = lambda: None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TrainerRank:
    """One DeepSpeed data-parallel rank. Construct, then ``setup(master_addr, master_port)`` on
    all ranks at once (the rendezvous blocks until every rank has joined).

    ``lr_schedule``: the multiplier of ``trainer.lr`` per optimizer update (default constant 1);
    the DeepSpeed engine steps it with every update it applies and keeps it in checkpoints."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        model_path: str,
        model_cfg: ModelConfig,
        trainer_cfg: TrainerConfig,
        temperature: float = 1.0,
        lr_schedule: Optional[LRSchedule] = None,
        entropy_metrics: bool = True,
    ):
        quiet.apply(trainer_cfg.log_level)  # third-party log noise off; before DeepSpeed is imported
        self.rank, self.world_size = rank, world_size
        self.model_path = model_path
        self.model_cfg, self.trainer_cfg = model_cfg, trainer_cfg
        self.temperature = temperature
        self.lr_schedule = lr_schedule or LRSchedule()
        self.entropy_metrics = entropy_metrics
        self.engine = None
        self.scheduler: Optional[torch.optim.lr_scheduler.LambdaLR] = None
        self.device = torch.device("cpu")
        self._weight_plan: Optional[List[Any]] = None  # bucket plan of the collective weight sync
        self._transfer = None  # rank 0's TransferGroup with the rollout engines

    # ------------------------------------------------------------------ setup
    def node_address(self) -> Tuple[str, int]:
        """(IP of this rank's node, a free TCP port there): rank 0 hosts the rendezvous."""
        try:
            import ray

            ip = ray.util.get_node_ip_address()
        except Exception:  # not inside Ray
            ip = "127.0.0.1"
        return ip, free_port("0.0.0.0" if ip != "127.0.0.1" else ip)

    def setup(self, master_addr: str, master_port: int) -> Dict[str, float]:
        """Join the process group, load the model, build AdamW and the DeepSpeed engine.
        Returns timings (seconds) of each phase."""
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        from actors.trainer.ds_config import build_ds_config

        times: Dict[str, float] = {}
        t0 = time.perf_counter()
        use_gpu = torch.cuda.is_available()
        local_rank = 0 if use_gpu else self.rank  # Ray gives each GPU actor its own CUDA_VISIBLE_DEVICES
        os.environ.update(
            RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK=str(local_rank),
            LOCAL_WORLD_SIZE=str(1 if use_gpu else self.world_size),
            MASTER_ADDR=master_addr, MASTER_PORT=str(master_port),
        )
        if use_gpu:
            torch.cuda.set_device(0)
            self.device = torch.device("cuda", 0)
        else:
            _skip_cpu_shm_comm_build()
        deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo", verbose=False)
        times["init_distributed_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        torch.manual_seed(self.trainer_cfg.seed)
        model = self._load_model()
        times["load_model_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        tc = self.trainer_cfg
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=tc.lr, betas=tuple(tc.adam_betas), weight_decay=tc.weight_decay, eps=tc.adam_eps
        )
        schedule = self.lr_schedule
        # A plain function, not the LRSchedule object: LambdaLR checkpoints the __dict__ of a callable
        # object and would put the saved schedule's shape over the config's on resume. The config
        # decides the shape; the checkpoint carries the count of updates taken (last_epoch).
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: schedule(update))
        config = build_ds_config(tc.zero_stage, self.model_cfg.dtype, self.world_size, tc.grad_clip, tc.deepspeed)
        # The engine steps the scheduler after each update it applies (not after a skipped one) and
        # saves / loads its state with every checkpoint.
        self.engine, _, _, self.scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                 lr_scheduler=scheduler, config=config)
        self.device = torch.device(get_accelerator().current_device_name()) if use_gpu else torch.device("cpu")
        times["deepspeed_initialize_s"] = time.perf_counter() - t0
        return times

    def _require_engine(self):
        if self.engine is None:
            raise RuntimeError(f"trainer rank {self.rank}: setup() has not run")
        return self.engine

    # ------------------------------------------------------------ collectives
    def _agree_max(self, n: int) -> int:
        """The largest ``n`` over all ranks (one all-reduce)."""
        import torch.distributed as dist

        t = torch.tensor([n], dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def _micro_batches(self, batch: Optional[Batch]) -> List[Tuple[torch.Tensor, Batch]]:
        """(row index, trimmed micro-batch on this rank's device) per token-budget micro-batch."""
        if batch is None or len(batch) == 0:
            return []
        out = []
        for idx in batch.split_by_token_budget(self.trainer_cfg.micro_batch_tokens, keep_groups=True):
            out.append((idx, batch.select(idx).trimmed().to(self.device)))
        return out

    def _padding_batch(self) -> Batch:
        """A 1-row, 1+1-token batch whose loss is multiplied by 0: it only keeps the collectives
        of a rank with fewer micro-batches in step with the others."""
        one = torch.ones((1, 1), dtype=torch.long, device=self.device)
        # Token id 1, not 0: id 0 is often the pad token, whose embedding may be zero, and then a
        # wrongly weighted padding pass would go unnoticed by the gradient-equality test.
        return Batch(
            prompt_ids=one, prompt_mask=one, response_ids=one,
            response_mask=one.float(), group_ids=torch.zeros(1, dtype=torch.long, device=self.device),
        )

    # ------------------------------------------------------------- forward only
    @torch.no_grad()
    def compute_logprobs(self, batch: Optional[Batch], temperature: Optional[float] = None) -> torch.Tensor:
        """Float32 [B, R] log-probs (0 on padding) of ``batch``'s responses under the current
        parameters, eval mode, with logits divided by ``temperature`` (default: the rank's; 1.0
        gives the raw log-probs the rollout engines report). All ranks must call this together
        (ZeRO-3 forward gathers)."""
        temp = self.temperature if temperature is None else temperature
        engine = self._require_engine()
        engine.eval()
        mbs = self._micro_batches(batch)
        n = self._agree_max(len(mbs))
        if batch is None:
            out = torch.zeros((0, 0))
        else:
            out = torch.zeros(batch.response_ids.shape, dtype=torch.float32)
        for i in range(n):
            if i < len(mbs):
                idx, mb = mbs[i]
                with budget_on_oom("trainer.micro_batch_tokens", self.trainer_cfg.micro_batch_tokens, mb.input_ids.numel()):
                    lp = micro_batch_logprobs(engine, mb, temperature=temp)
                out[idx, : lp.shape[1]] = lp.float().cpu()
            else:
                micro_batch_logprobs(engine, self._padding_batch(), temperature=temp)
        return out

    # ------------------------------------------------------------------ train
    def train_mini_batch(self, batch_shard: Optional[Batch], loss_fn_spec: LossSpec, step: int, totals: Totals) -> RankMetrics:
        """One optimizer update from this rank's shard of a mini-batch.

        ``totals``: the global normalisers of the WHOLE mini-batch (all ranks), as returned by
        ``resolve_loss(spec).totals(full_batch, world_size)``. ``step``: the schedule step for
        divergence coefficients. Returns RankMetrics (the group merges ranks)."""
        engine = self._require_engine()
        loss_fn = resolve_loss(loss_fn_spec)
        engine.train()
        t0 = time.perf_counter()
        mbs = self._micro_batches(batch_shard)
        n = self._agree_max(len(mbs))
        sums: Dict[str, float] = {}
        weighted: Dict[str, List[float]] = {}
        tokens = 0.0
        nonfinite = 0
        for i in range(n):
            engine.set_gradient_accumulation_boundary(i == n - 1)
            real = i < len(mbs)
            mb = mbs[i][1] if real else self._padding_batch()
            entropy_grad = getattr(loss_fn, "entropy_grad", False) and real
            want_entropy = (self.entropy_metrics or entropy_grad) and real
            with budget_on_oom("trainer.micro_batch_tokens", self.trainer_cfg.micro_batch_tokens, mb.input_ids.numel()):
                logp, entropy, logits = micro_batch_forward(engine, mb, temperature=self.temperature,
                                                            with_entropy=want_entropy, entropy_grad=entropy_grad)
            if real:
                # Full-distribution terms read the same forward's logits: one forward per micro-batch.
                with budget_on_oom("trainer.micro_batch_tokens", self.trainer_cfg.micro_batch_tokens, mb.input_ids.numel()):
                    if getattr(loss_fn, "needs_logits", False):
                        loss, metrics = loss_fn(logp, mb, step, totals, entropy, logits=logits)
                    else:
                        loss, metrics = loss_fn(logp, mb, step, totals, entropy)
            del logits  # the graph keeps what its backward needs; no [B, R, V] reference outlives this pass
            if real:
                if not bool(torch.isfinite(loss.detach())):
                    # Keep the collective pattern of the other ranks, contribute nothing, skip below.
                    nonfinite += 1
                    engine.backward(logp.sum() * 0.0, scale_wrt_gas=False)
                    continue
                mb_tokens = float(mb.loss_mask.sum())
                tokens += mb_tokens
                comp = loss_fn.component_tokens(mb)
                for key, value in metrics.items():
                    if key.startswith("loss/"):
                        sums[key] = sums.get(key, 0.0) + float(value)
                    else:
                        w = _metric_weight(key, comp, mb_tokens)
                        acc = weighted.setdefault(key, [0.0, 0.0])
                        acc[0] += float(value) * w
                        acc[1] += w
            else:
                loss = logp.sum() * 0.0
            with budget_on_oom("trainer.micro_batch_tokens", self.trainer_cfg.micro_batch_tokens, mb.input_ids.numel()):
                engine.backward(loss, scale_wrt_gas=False)
        if self._agree_max(nonfinite):
            # A NaN/inf loss on any rank: drop this mini-batch's gradients everywhere, no optimizer
            # step (parameters and Adam state stay as they were), and report it.
            engine.zero_grad()
            if self.trainer_cfg.zero_stage == 3:
                # Measured: ZeRO-3 keeps part of the dropped gradients in its partitions, so the
                # next update would be wrong. Stop instead of training on a corrupted update.
                raise RuntimeError(
                    f"step {step}: NaN/inf loss in {nonfinite} micro-batch(es) on rank {self.rank}; under ZeRO-3 "
                    "the update cannot be skipped safely. Resume from the last checkpoint (trainer.resume=auto) "
                    "or use trainer.zero_stage <= 2, where such updates are skipped")
            return RankMetrics(sums={}, weighted={}, stats={
                "trainer/skipped_nonfinite": 1.0, "trainer/nonfinite_micro_batches": float(nonfinite),
                "trainer/micro_batches": float(len(mbs)), "time/train_step_s": time.perf_counter() - t0})
        local_norm = self._stage0_grad_norm()
        lr = self.learning_rate()  # what this update applies; engine.step() moves it to the next update's
        engine.step()
        grad_norm = engine.get_global_grad_norm()
        if grad_norm is None:
            grad_norm = local_norm
        stats = {
            "trainer/skipped_nonfinite": 0.0,
            "trainer/micro_batches": float(len(mbs)),
            "trainer/padding_micro_batches": float(n - len(mbs)),
            "trainer/response_tokens": tokens,
            "trainer/lr": lr,
            "time/train_step_s": time.perf_counter() - t0,
        }
        if grad_norm is not None:
            stats["trainer/grad_norm"] = float(grad_norm)
        return RankMetrics(sums=sums, weighted=weighted, stats=stats)

    def learning_rate(self) -> float:
        """The learning rate the next update applies (the optimizer's param group)."""
        self._require_engine()
        return float(self.scheduler.optimizer.param_groups[0]["lr"])

    def _set_scheduled_lr(self) -> None:
        """Set the optimizer's learning rate to the schedule's for the updates counted so far: a
        loaded optimizer state carries the rate it was saved with, which may belong to another count."""
        for group, lr in zip(self.scheduler.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr

    def _stage0_grad_norm(self) -> Optional[float]:
        """Global L2 norm of the (already all-reduced) gradients under ZeRO-0, where DeepSpeed's
        fp32 path clips without recording the norm; None elsewhere (the engine reports it)."""
        engine = self.engine
        if engine.zero_optimization_stage() != 0:
            return None
        grads = [p.grad.detach().float() for p in engine.module.parameters() if p.grad is not None]
        if not grads:
            return None
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    # ---------------------------------------------------------------- weights
    def get_weights(self, dtype: Optional[str] = None) -> Optional[List[Tuple[str, torch.Tensor]]]:
        """[(HF parameter name, full tensor on CPU)] on rank 0, None elsewhere; in the model's
        dtype unless ``dtype`` is given. Under ZeRO-3 every rank must call (gathers are collective)."""
        import deepspeed

        engine = self._require_engine()
        cast = None if dtype is None else getattr(torch, dtype)
        out: List[Tuple[str, torch.Tensor]] = []
        stage3 = engine.zero_optimization_stage() == 3
        for name, p in engine.module.named_parameters():
            # One parameter at a time: peak memory is one full tensor, not the whole model.
            with deepspeed.zero.GatheredParameters([p], enabled=stage3):
                if self.rank == 0:
                    t = p.detach().to("cpu", copy=True)
                    out.append((name, t if cast is None else t.to(cast)))
        return out if self.rank == 0 else None

    def packed_weights(self) -> Any:
        """``get_weights()`` packed into one buffer (``actors.rollout.weights.PackedWeights``) on
        rank 0, None elsewhere: returned through Ray, it lands in the object store without
        passing through the caller."""
        from actors.rollout.weights import pack

        weights = self.get_weights()
        return pack(weights) if self.rank == 0 else None

    def param_distance(self, packed: Any) -> Optional[float]:
        """On rank 0: the L2 distance between the current parameters and ``packed``
        (``PackedWeights`` of the same model, HF names), sqrt of the sum of squared differences over
        every parameter, in float32; None elsewhere. Under ZeRO-3 every rank must call (gathers are
        collective); only rank 0 needs ``packed``. The weights never leave the trainer."""
        import deepspeed

        from actors.rollout.weights import as_named_tensors

        engine = self._require_engine()
        stage3 = engine.zero_optimization_stage() == 3
        other = dict(as_named_tensors(packed)) if self.rank == 0 else {}
        total = 0.0
        for name, p in engine.module.named_parameters():
            with deepspeed.zero.GatheredParameters([p], enabled=stage3):
                if self.rank == 0:
                    total += float((p.detach().to("cpu", torch.float32) - other[name].to(torch.float32)).pow(2).sum())
        return total ** 0.5 if self.rank == 0 else None

    # ------------------------------------------------------------ weight sync
    def _param_specs(self) -> List[Any]:
        from actors.rollout.buckets import ParamSpec

        # Under ZeRO-3 a parameter's local tensor is a partition; ds_shape is its full shape.
        return [ParamSpec(name, p.dtype, tuple(getattr(p, "ds_shape", p.shape)))
                for name, p in self._require_engine().module.named_parameters()]

    def weight_plan(self, bucket_bytes: int) -> List[Any]:
        """The bucket plan of this model (``actors.rollout.buckets.plan_buckets``): HF names,
        dtypes and full shapes in ``named_parameters`` order, cut into <= ``bucket_bytes``."""
        from actors.rollout.buckets import plan_buckets

        return plan_buckets(self._param_specs(), bucket_bytes)

    def join_weight_group(self, address: Any, plan: List[Any]) -> Optional[str]:
        """Keep ``plan`` for ``broadcast_weights``; rank 0 also hosts and joins the transfer group
        at ``address`` (blocks until every engine worker joined). Returns None, or why joining
        failed: a peer's failure must not raise here (the group wrapper would stop the trainer)."""
        from actors.rollout.transfer_group import TransferGroup, node_ip

        self.leave_weight_group()
        if [p for b in plan for p in b.params] != self._param_specs():
            raise ValueError("join_weight_group: the bucket plan does not describe this model's parameters")
        self._weight_plan = list(plan)
        if self.rank == 0:
            try:
                self._transfer = TransferGroup(address, 0, self.device, node_ip())
            except Exception as exc:  # a member never joined: the caller re-forms
                return f"{type(exc).__name__}: {exc}"
        return None

    @torch.no_grad()
    def broadcast_weights(self) -> Dict[str, Any]:
        """Send the current weights, bucket by bucket, to the transfer group (rank 0). Under ZeRO-3
        every rank must call: each bucket's parameters are gathered together (one bucket's worth
        of full tensors at a time), rank 0 sends it, then the next. Returns ``{"bytes",
        "buckets", "seconds", "error"}``; ``error`` is None or why the broadcast broke (a peer
        died, say), in which case rank 0 still takes part in every gather, so the other ranks
        never block, and the caller re-forms the group."""
        import deepspeed

        engine = self._require_engine()
        plan = self._weight_plan
        if plan is None:
            raise RuntimeError(f"trainer rank {self.rank}: broadcast_weights before join_weight_group")
        stage3 = engine.zero_optimization_stage() == 3
        params = dict(engine.module.named_parameters())
        transfer = self._transfer
        error = None if self.rank != 0 or transfer is not None else "rank 0 is not in a transfer group"
        sent = 0
        t0 = time.perf_counter()
        for bucket in plan:
            group = [params[name] for name in bucket.names]
            with deepspeed.zero.GatheredParameters(group, enabled=stage3):
                if self.rank == 0 and error is None:
                    try:
                        sent += transfer.send_bucket(bucket, [p.data for p in group])
                    except Exception as exc:
                        error = f"{type(exc).__name__}: {exc}"
        if self.rank == 0 and error is None:
            try:
                transfer.flush()
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        return {"bytes": sent, "buckets": len(plan), "seconds": time.perf_counter() - t0, "error": error}

    def leave_weight_group(self) -> None:
        transfer, self._transfer = self._transfer, None
        if transfer is not None:
            transfer.close()

    def _load_model(self) -> torch.nn.Module:
        """The policy at ``model_path`` as ``model.*`` says: dtype, attention implementation,
        remote code, gradient checkpointing."""
        m = self.model_cfg
        model = load_causal_lm(self.model_path, m.dtype, m.trust_remote_code, m.attn_implementation)
        if m.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        return model

    # ------------------------------------------------------------- checkpoints
    def save_checkpoint(self, ckpt_dir: str, tag: Optional[str] = None, client_state: Optional[Dict] = None) -> str:
        """DeepSpeed checkpoint (module, optimizer incl. ZeRO partitions) under ``ckpt_dir/tag``;
        all ranks must call with the same arguments. Returns the tag."""
        engine = self._require_engine()
        tag = tag or f"global_step{engine.global_steps}"
        engine.save_checkpoint(ckpt_dir, tag=tag, client_state=dict(client_state or {}))
        return tag

    def load_checkpoint(self, ckpt_dir: str, tag: Optional[str] = None, lr_schedule_state: bool = True) -> Dict[str, Any]:
        """Restore module and optimizer state, and with ``lr_schedule_state`` the schedule's count
        of updates taken (else the count stays where it is); returns the client_state saved with it."""
        engine = self._require_engine()
        path, client_state = engine.load_checkpoint(ckpt_dir, tag=tag, load_optimizer_states=True,
                                                    load_lr_scheduler_states=lr_schedule_state)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in '{ckpt_dir}' (tag={tag})")
        self._set_scheduled_lr()
        return dict(client_state or {})

    def snapshot_state(self, snapshot_dir: str) -> None:
        """Keep a copy of parameters AND optimizer state (Nash-MP's pi_k) in ``snapshot_dir``
        (a directory every rank can read: /dev/shm on one node)."""
        self.save_checkpoint(snapshot_dir, tag="snapshot")

    def restore_state(self, snapshot_dir: str) -> None:
        """Back to the snapshot's parameters and optimizer state, keeping the learning-rate schedule's
        count: Nash-MP's full step restarts from pi_k, but its updates are updates taken, so the
        schedule goes on from where the half step left it instead of replaying the half step's rates."""
        self.load_checkpoint(snapshot_dir, tag="snapshot", lr_schedule_state=False)

    def export_hf(self, out_dir: str, tokenizer_path: Optional[str] = None) -> Optional[str]:
        """``save_pretrained`` of the full weights (and the tokenizer) into ``out_dir`` from rank 0.
        Every rank must call (ZeRO-3 gathers)."""
        weights = self.get_weights()
        if self.rank != 0:
            return None
        os.makedirs(out_dir, exist_ok=True)
        module = self._require_engine().module
        module.save_pretrained(out_dir, state_dict=dict(weights))
        if tokenizer_path:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=self.model_cfg.trust_remote_code
                                          ).save_pretrained(out_dir)
        return out_dir

    def global_steps(self) -> int:
        return int(self._require_engine().global_steps)

    def shutdown(self) -> None:
        """Leave the process groups so the actor can exit cleanly."""
        import torch.distributed as dist

        self.leave_weight_group()
        if dist.is_initialized():
            dist.destroy_process_group()
