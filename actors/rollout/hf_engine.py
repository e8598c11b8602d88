"""The transformers rollout engine: ``model.generate`` with sampling, batched.

The fallback backend (``rollout.backend=hf``) and the reference the vLLM engine is checked
against. Slower than vLLM (no paged KV cache, no continuous batching) but has no dependency
beyond transformers. Runs on the GPU when one is visible, else on the CPU.

Log-probs: ``logprobs["rollout"]`` is what the sampler drew from, the same quantity as the vLLM
engine's ``processed_logprobs`` (see ``actors.rollout.vllm_engine``): ``log_softmax`` in float32 of
generate's ``scores``, the logits after the temperature, top-k and top-p warpers (transformers
applies them in that order, masking with -inf, as vLLM does). Without truncation that is
``log_softmax(logits / T)``, the trainer's quantity; with top-k/top-p it is renormalised over the
kept tokens. ``sequence_logprobs`` stays raw (temperature 1, untruncated).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from actors import quiet
from actors.rollout.common import IdleClock, Sample, StaleWeightsError, build_rollout_batch, check_prompts, check_weight_version, weight_load
from actors.rollout.episodes import EpisodeRollout
from actors.rollout.weights import as_named_tensors
from rlplat.episodes import TurnSample
from rlplat.batch import Batch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype '{name}'; expected one of {sorted(_DTYPES)}") from None


class HFRolloutEngine:
    """Samples with ``transformers`` ``generate``; see ``actors.rollout`` for the interface.

    ``rollout`` is a ``RolloutConfig`` (or anything with its attributes): ``max_new_tokens``,
    ``temperature`` (0 = greedy), ``top_p``, ``top_k`` (<= 0: off), ``max_model_len`` and
    ``max_num_seqs`` (rows per ``generate`` call) are used.
    """

    backend = "hf"

    def __init__(self, model_path: str, tokenizer_path: str, rollout: Any, dtype: str, seed: int,
                 trust_remote_code: bool = False) -> None:
        quiet.apply()  # third-party log noise off (trainer.log_level, via RLPLAT_LOG_LEVEL)
        self.model_path, self.tokenizer_path = model_path, tokenizer_path
        self.rollout = rollout
        self.dtype = dtype
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(seed)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype(dtype),
                                                          trust_remote_code=trust_remote_code)
        self.model.to(self.device)
        self.model.eval()
        self.eos_id = self.tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError(f"tokenizer at {tokenizer_path} has no eos_token_id")
        # generate() pads finished rows with this; the Batch is re-padded with the caller's pad_id.
        pad = self.tokenizer.pad_token_id
        self._gen_pad = pad if pad is not None else self.eos_id
        greedy = rollout.temperature <= 0
        self.generation_config = GenerationConfig(
            max_new_tokens=rollout.max_new_tokens,
            do_sample=not greedy,
            temperature=1.0 if greedy else rollout.temperature,
            top_p=rollout.top_p,
            top_k=max(rollout.top_k, 0),  # 0 disables top-k (None would fall back to 50)
            repetition_penalty=1.0,
            num_beams=1,
            eos_token_id=self.eos_id,
            pad_token_id=self._gen_pad,
            return_dict_in_generate=True,
            output_scores=True,  # the processed logits the token is sampled from (temperature, top-k, top-p)
        )
        self.greedy_config = GenerationConfig(**{**self.generation_config.to_dict(), "do_sample": False,
                                                 "temperature": None, "top_p": None, "top_k": None})
        self._configs: Dict[Tuple[bool, int], GenerationConfig] = {}  # (greedy, max_new_tokens) -> config
        # rollout.env: every generate runs multi-turn episodes (actors.rollout.episodes)
        self.episodes = EpisodeRollout(rollout, self.tokenizer) if rollout.env.name else None
        self.weight_version = 0
        self.idle = IdleClock()
        self._group = None  # the collective weight-transfer group, once joined
        self._weight_plan: List[Any] = []

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
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
        """``group_size`` responses per prompt as a Batch of ``len(prompt_ids) * group_size`` rows
        (prompt-major); ``logprobs["rollout"]`` holds the sampler's log-probs of the sampled tokens
        (at the temperature, after top-k/top-p; see the module docstring).
        ``seed`` reseeds torch's generator first (on CPU torch reads it mod 2**32, see
        ``rlplat.seeds``), so a step is reproducible (resume);
        ``greedy`` decodes by argmax (evaluation's pass@1). ``ignore_eos`` (None:
        ``rollout.ignore_eos``): every response has exactly ``max_new_tokens`` tokens, none of them
        EOS (``min_new_tokens`` masks EOS while sampling, as the vLLM engine's ``min_tokens``)."""
        if seed is not None:
            torch.manual_seed(seed)
        check_weight_version(self.weight_version, weight_version)
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        no_eos = self.rollout.ignore_eos if ignore_eos is None else ignore_eos
        if self.episodes is not None:
            check_prompts(prompt_ids, self.rollout.max_episode_tokens, self.rollout.max_model_len)
            grouped = self.episodes.run(prompt_ids, group_size, meta,
                                        lambda prompts, budgets: self._turns(prompts, budgets, greedy))
        else:
            check_prompts(prompt_ids, self.rollout.max_new_tokens, self.rollout.max_model_len)
            rows = [list(p) for p in prompt_ids for _ in range(group_size)]
            samples = self._sample_all(rows, greedy, no_eos)
            grouped = [samples[i * group_size : (i + 1) * group_size] for i in range(len(prompt_ids))]
        self.idle.generated()
        return build_rollout_batch(prompt_ids, grouped, group_offset, pad_id, meta, self.weight_version)

    def _sample_all(self, rows: List[List[int]], greedy: bool, ignore_eos: bool,
                    max_new_tokens: Optional[int] = None) -> List[Sample]:
        """``_sample`` over ``rows`` in chunks of ``rollout.max_num_seqs``."""
        step = max(1, int(self.rollout.max_num_seqs))
        samples: List[Sample] = []
        for start in range(0, len(rows), step):
            samples.extend(self._sample(rows[start : start + step], greedy, ignore_eos, max_new_tokens))
        return samples

    def _turns(self, prompts: List[List[int]], budgets: List[int], greedy: bool) -> List[TurnSample]:
        """One model turn per episode history, each cut to its token budget (a row sampled past its
        budget keeps its first ``budget`` tokens: the later ones do not change the earlier ones)."""
        samples = self._sample_all(prompts, greedy, False, max(budgets))
        out = []
        for s, budget in zip(samples, budgets):
            cut = len(s.token_ids) > budget
            out.append(TurnSample(s.token_ids[:budget], s.logprobs[:budget], "length" if cut else s.finish_reason))
        return out

    def _sample(self, prompts: List[List[int]], greedy: bool = False, ignore_eos: bool = False,
                max_new_tokens: Optional[int] = None) -> List[Sample]:
        """One response per prompt; ``max_new_tokens`` (None: ``rollout.max_new_tokens``) caps its length."""
        max_new = self.rollout.max_new_tokens if max_new_tokens is None else max_new_tokens
        p = max(len(x) for x in prompts)
        ids = torch.full((len(prompts), p), self._gen_pad, dtype=torch.long)
        attn = torch.zeros((len(prompts), p), dtype=torch.long)
        for row, x in enumerate(prompts):
            ids[row, p - len(x) :] = torch.as_tensor(x)
            attn[row, p - len(x) :] = 1
        out = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=attn.to(self.device),
            generation_config=self._config(greedy, max_new),
            # transformers fills an unset eos_token_id from the model's own generation config, so
            # EOS cannot just be dropped; masking it until max_new_tokens means it never stops.
            **({"min_new_tokens": max_new} if ignore_eos else {}),
        )
        new = out.sequences[:, p:].cpu()  # [n, T]
        logits = torch.stack(out.scores, dim=1).float()  # [n, T, V], -inf where top-k/top-p masked
        logprobs = logits.log_softmax(-1).gather(-1, new.to(logits.device).unsqueeze(-1)).squeeze(-1).cpu()
        samples = []
        for row in range(len(prompts)):
            tokens = new[row].tolist()
            finish = "length"
            if self.eos_id in tokens:
                tokens = tokens[: tokens.index(self.eos_id) + 1]
                finish = "stop"
            samples.append(
                Sample(
                    token_ids=tokens,
                    logprobs=logprobs[row, : len(tokens)].tolist(),
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                    finish_reason=finish,
                )
            )
        return samples

    def _config(self, greedy: bool, max_new_tokens: int) -> GenerationConfig:
        """The sampling (or greedy) generation config with ``max_new_tokens`` (episodes vary it per turn)."""
        base = self.greedy_config if greedy else self.generation_config
        if max_new_tokens == base.max_new_tokens:
            return base
        key = (greedy, max_new_tokens)
        if key not in self._configs:
            self._configs[key] = GenerationConfig(**{**base.to_dict(), "max_new_tokens": max_new_tokens})
        return self._configs[key]

    @torch.no_grad()
    def sequence_logprobs(self, prompt_ids: List[int], response_ids: List[int]) -> List[float]:
        """Raw log-prob (nats) of each ``response_ids[t]`` given the prompt and ``response_ids[:t]``."""
        if not prompt_ids:
            raise ValueError("sequence_logprobs needs a non-empty prompt")
        if not response_ids:
            return []
        ids = torch.as_tensor([list(prompt_ids) + list(response_ids)], device=self.device)
        logits = self.model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
        target = torch.as_tensor(response_ids, device=logits.device).unsqueeze(-1)
        return logits.log_softmax(-1).gather(-1, target).squeeze(-1).cpu().tolist()

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def update_weights(self, named_tensors: Any, version: Optional[int] = None) -> Dict[str, float]:
        """Copy HF-named tensors (``PackedWeights``, dict or ``(name, tensor)`` list; a subset of
        the state dict is allowed) into the model in place. Returns ``{"seconds", "idle_s"}``
        (see ``actors.rollout.IdleClock``)."""
        with weight_load(self, version) as figures:  # LOADING until loaded; a failure leaves it
            weights = as_named_tensors(named_tensors)
            targets = self._targets("update_weights", [(n, tuple(t.shape)) for n, t in weights])
            for name, tensor in weights:
                targets[name].copy_(tensor)
        return figures

    def _targets(self, caller: str, shapes: List[Tuple[str, Tuple[int, ...]]]) -> Dict[str, torch.Tensor]:
        """The model's state dict (tensors sharing storage with the parameters), after checking
        that every ``(name, shape)`` is in it."""
        targets = self.model.state_dict()
        unknown = [name for name, _ in shapes if name not in targets]
        if unknown:
            raise KeyError(f"{caller}: {len(unknown)} names are not in the model, e.g. {unknown[:5]}")
        for name, shape in shapes:
            if shape != tuple(targets[name].shape):
                raise ValueError(f"{caller}: '{name}' has shape {shape}, the model's is {tuple(targets[name].shape)}")
        return targets

    def join_weight_group(self, address: Any, rank_offset: int, plan: List[Any]) -> None:
        """Join the collective weight-transfer group (``rollout.weight_sync=collective``) as rank
        ``rank_offset``; ``plan`` is the bucket plan rank 0 broadcasts at every sync. The plan
        is checked against the model first. Joining again leaves the previous group."""
        from actors.rollout.transfer_group import TransferGroup, node_ip

        self._targets("join_weight_group", [(p.name, p.shape) for b in plan for p in b.params])
        self.leave_weight_group()
        self._weight_plan = list(plan)
        self._group = TransferGroup(address, rank_offset, self.device, node_ip())

    @torch.no_grad()
    def receive_weights(self, version: Optional[int] = None) -> Dict[str, float]:
        """Receive one broadcast of the weights from the trainer's rank 0 (which sends at the
        same time) straight into the parameters. Returns ``{"seconds", "idle_s"}``."""
        if self._group is None:
            raise StaleWeightsError("this engine is in no weight-transfer group (restarted?)")
        with weight_load(self, version) as figures:  # LOADING until loaded; a failure leaves it
            targets = self.model.state_dict()
            for _, named in self._group.receive(self._weight_plan):
                for name, tensor in named:
                    targets[name].copy_(tensor)
        return figures

    def weight_group_address(self) -> Any:
        """The ``GroupAddress`` this engine is in, None if none (a restarted engine)."""
        return None if self._group is None else self._group.address

    def leave_weight_group(self) -> None:
        if self._group is not None:
            self._group.close()
            self._group = None

    # -------------------------------------------------------------------- admin
    def ready(self) -> bool:
        return True

    def info(self) -> Dict[str, Any]:
        return {
            "backend": self.backend,
            "model_path": self.model_path,
            "tokenizer_path": self.tokenizer_path,
            "pid": os.getpid(),
            "device": str(self.device),
            "dtype": self.dtype,
            "weight_version": self.weight_version,
        }
