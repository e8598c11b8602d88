"""The one dataclass that carries a rollout batch between actors.

Layout (B = samples, P = longest prompt, R = longest response, all padded):

    prompt_ids      Long  [B, P]  left-padded with ``pad_id``
    prompt_mask     Long  [B, P]  1 on real prompt tokens
    response_ids    Long  [B, R]  right-padded with ``pad_id``
    response_mask   Float [B, R]  1.0 on real response tokens (attended; the positions a forward scores)
    loss_mask       Float [B, R]  1.0 on the tokens the model sampled, the positions every loss,
                    estimator, divergence and metric reads; 0.0 on padding and on the environment's
                    observation tokens of a multi-turn episode (``rlplat.episodes``). A single-turn
                    batch's loss_mask equals its response_mask (the default when none is given).
    logprobs        dict role -> Float [B, R]  log-prob (nats) of each response token under
                    that role: "rollout" (engine that sampled), "old" (trainer before the update),
                    "reference", "teacher", "snapshot", "initial" (stored DPH-RL samples)
    topk            dict role -> ``TopK`` (``rlplat.divergences.topk``): that role's next-token
                    distribution at each response position in compact form, ``logp`` Float32
                    [B, R, k] (normalised over the full vocabulary), ``ids`` Int32 [B, R, k],
                    ``tail_logp`` Float32 [B, R]; only for roles scored with ``top_k_logits > 0``
                    (full-distribution divergence terms). Padding positions hold 0.
    rewards         Float [B]  scalar reward per sample (NaN never: failures are counted upstream)
    advantages      Float [B]  per-sequence advantage, broadcast over tokens by the loss
    group_ids       Long  [B]  samples drawn for the same prompt share a group id
    kind            Long  [B]  DATA_EXPLORE (on-policy RL rows) or DATA_REHEARSAL (stored pi_0 rows)
    meta            dict name -> list of length B (prompt text, answer, response text, ...)

The full sequence fed to a causal LM is ``cat([prompt_ids, response_ids], 1)``; the log-prob of
``response_ids[:, t]`` comes from the logits at position ``P + t - 1``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence

import torch

from rlplat.divergences.topk import TopK

DATA_EXPLORE = 0
DATA_REHEARSAL = 1


def minibatch_seed(run_seed: int, step: int, update: int = 0) -> int:
    """Seed of the mini-batch shuffle of optimizer call ``update`` (< 2**16) of ``step``: every
    call of a step (Nash-MP's inner updates) shuffles its own way, reproducibly across resumes."""
    return (run_seed * 100003 + step) * 2**16 + update


@dataclass
class Batch:
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    group_ids: torch.Tensor
    logprobs: Dict[str, torch.Tensor] = field(default_factory=dict)
    rewards: Optional[torch.Tensor] = None
    advantages: Optional[torch.Tensor] = None
    kind: Optional[torch.Tensor] = None
    meta: Dict[str, List[Any]] = field(default_factory=dict)
    topk: Dict[str, TopK] = field(default_factory=dict)
    loss_mask: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.kind is None:
            self.kind = torch.full((len(self),), DATA_EXPLORE, dtype=torch.long)
        if self.loss_mask is None:
            self.loss_mask = self.response_mask.clone()
        self.validate()

    def __len__(self) -> int:
        return int(self.response_ids.shape[0])

    # ------------------------------------------------------------------ shapes
    def validate(self) -> None:
        """Raise ``ValueError`` naming the field whose shape disagrees with the layout above."""
        b, r = self.response_ids.shape
        p = self.prompt_ids.shape[1]
        expect = {
            "prompt_ids": (b, p),
            "prompt_mask": (b, p),
            "response_mask": (b, r),
            "loss_mask": (b, r),
            "group_ids": (b,),
            "kind": (b,),
        }
        for name, shape in expect.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"Batch.{name} has shape {got}, expected {shape}")
        if bool((self.loss_mask > self.response_mask).any()):
            raise ValueError("Batch.loss_mask is 1 where response_mask is 0: a loss position must be a response token")
        for role, lp in self.logprobs.items():
            if tuple(lp.shape) != (b, r):
                raise ValueError(f"Batch.logprobs['{role}'] has shape {tuple(lp.shape)}, expected {(b, r)}")
        for role, top in self.topk.items():
            if not isinstance(top, TopK):
                raise ValueError(f"Batch.topk['{role}'] must be a TopK, got {type(top).__name__}")
            k = top.ids.shape[-1] if top.ids.dim() == 3 else -1
            shapes = (tuple(top.logp.shape), tuple(top.ids.shape), tuple(top.tail_logp.shape))
            if shapes != ((b, r, k), (b, r, k), (b, r)):
                raise ValueError(f"Batch.topk['{role}'] has logp/ids/tail_logp shapes {shapes}, "
                                 f"expected {(b, r, 'k')}, {(b, r, 'k')}, {(b, r)}")
        for name in ("rewards", "advantages"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != (b,):
                raise ValueError(f"Batch.{name} has shape {tuple(t.shape)}, expected {(b,)}")
        for key, values in self.meta.items():
            if len(values) != b:
                raise ValueError(f"Batch.meta['{key}'] has {len(values)} entries, expected {b}")

    @property
    def input_ids(self) -> torch.Tensor:
        """Long [B, P + R]: prompt then response."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """Long [B, P + R]."""
        return torch.cat([self.prompt_mask.long(), self.response_mask.long()], dim=1)

    @property
    def num_tokens(self) -> torch.Tensor:
        """Long [B]: real (prompt + response) tokens per sample, the unit of token budgets."""
        return self.prompt_mask.long().sum(1) + self.response_mask.long().sum(1)

    # ------------------------------------------------------------- reshaping
    def select(self, index: Sequence[int] | torch.Tensor) -> "Batch":
        """Rows ``index`` (in that order) as a new Batch; padding is kept as is."""
        idx = torch.as_tensor(index, dtype=torch.long)
        pick = lambda t: None if t is None else t.index_select(0, idx)  # noqa: E731
        return Batch(
            prompt_ids=pick(self.prompt_ids),
            prompt_mask=pick(self.prompt_mask),
            response_ids=pick(self.response_ids),
            response_mask=pick(self.response_mask),
            loss_mask=pick(self.loss_mask),
            group_ids=pick(self.group_ids),
            logprobs={k: pick(v) for k, v in self.logprobs.items()},
            rewards=pick(self.rewards),
            advantages=pick(self.advantages),
            kind=pick(self.kind),
            meta={k: [v[i] for i in idx.tolist()] for k, v in self.meta.items()},
            topk={k: TopK(*(pick(t) for t in v)) for k, v in self.topk.items()},
        )

    def trimmed(self) -> "Batch":
        """Drop all-padding columns (left of prompts, right of responses) to save compute."""
        p_keep = int(self.prompt_mask.long().sum(1).max().item()) if len(self) else 0
        r_keep = int(self.response_mask.sum(1).max().item()) if len(self) else 0
        p0 = self.prompt_ids.shape[1] - p_keep
        out = Batch(
            prompt_ids=self.prompt_ids[:, p0:],
            prompt_mask=self.prompt_mask[:, p0:],
            response_ids=self.response_ids[:, :r_keep],
            response_mask=self.response_mask[:, :r_keep],
            loss_mask=self.loss_mask[:, :r_keep],
            group_ids=self.group_ids,
            logprobs={k: v[:, :r_keep] for k, v in self.logprobs.items()},
            rewards=self.rewards,
            advantages=self.advantages,
            kind=self.kind,
            meta=dict(self.meta),
            topk={k: TopK(*(t[:, :r_keep] for t in v)) for k, v in self.topk.items()},
        )
        return out

    @staticmethod
    def concat(batches: Sequence["Batch"], pad_id: int) -> "Batch":
        """Stack batches row-wise, re-padding prompts on the left and responses on the right.

        Optional fields (rewards, advantages, a logprob or top-k role, a meta key) must be present
        in all batches or in none; a top-k role's k must agree.
        """
        if not batches:
            raise ValueError("Batch.concat needs at least one batch")
        p = max(b.prompt_ids.shape[1] for b in batches)
        r = max(b.response_ids.shape[1] for b in batches)

        def lpad(t: torch.Tensor, width: int, value: float) -> torch.Tensor:
            return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)

        def rpad(t: torch.Tensor, width: int, value: float) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

        def rpad_topk(role: str) -> TopK:
            ks = {b.topk[role].ids.shape[-1] for b in batches}
            if len(ks) != 1:
                raise ValueError(f"Batch.concat: batches disagree on k of topk['{role}']: {sorted(ks)}")
            # Pad dim 1 (positions) of [b, R, k] and [b, R] tensors with 0, as logprobs are.
            pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, r - t.shape[1]) if t.dim() == 3 else (0, r - t.shape[1]))  # noqa: E731
            return TopK(*(torch.cat([pad(getattr(b.topk[role], f)) for b in batches]) for f in TopK._fields))

        def same_keys(name: str, keysets: List[set]) -> set:
            if any(k != keysets[0] for k in keysets):
                raise ValueError(f"Batch.concat: batches disagree on {name} keys: {keysets}")
            return keysets[0]

        def optional(name: str) -> Optional[torch.Tensor]:
            present = [getattr(b, name) is not None for b in batches]
            if any(present) and not all(present):
                raise ValueError(f"Batch.concat: '{name}' is set in some batches but not all")
            return torch.cat([getattr(b, name) for b in batches]) if all(present) else None

        roles = same_keys("logprobs", [set(b.logprobs) for b in batches])
        metas = same_keys("meta", [set(b.meta) for b in batches])
        topk_roles = same_keys("topk", [set(b.topk) for b in batches])
        return Batch(
            prompt_ids=torch.cat([lpad(b.prompt_ids, p, pad_id) for b in batches]),
            prompt_mask=torch.cat([lpad(b.prompt_mask, p, 0) for b in batches]),
            response_ids=torch.cat([rpad(b.response_ids, r, pad_id) for b in batches]),
            response_mask=torch.cat([rpad(b.response_mask, r, 0.0) for b in batches]),
            loss_mask=torch.cat([rpad(b.loss_mask, r, 0.0) for b in batches]),
            group_ids=torch.cat([b.group_ids for b in batches]),
            logprobs={k: torch.cat([rpad(b.logprobs[k], r, 0.0) for b in batches]) for k in roles},
            rewards=optional("rewards"),
            advantages=optional("advantages"),
            kind=torch.cat([b.kind for b in batches]),
            meta={k: [x for b in batches for x in b.meta[k]] for k in metas},
            topk={k: rpad_topk(k) for k in sorted(topk_roles)},
        )

    def mini_batches(self, num: int, epochs: int, generator: torch.Generator) -> List[torch.Tensor]:
        """Row indices of the ``epochs * num`` PPO mini-batches of this batch: each epoch shuffles
        the groups with ``generator`` and cuts them into ``num`` chunks of whole groups (group-level
        masks and baselines stay intact)."""
        groups = self.group_ids.unique()
        out = []
        for _ in range(epochs):
            for chosen in groups[torch.randperm(len(groups), generator=generator)].chunk(num):
                out.append(torch.isin(self.group_ids, chosen).nonzero().flatten())
        return out

    def split_by_token_budget(self, max_tokens: int, keep_groups: bool = False) -> List[torch.Tensor]:
        """Partition row indices into micro-batches whose padded size (rows x longest row)
        stays within ``max_tokens``. Rows keep their order. With ``keep_groups`` the unit is a
        group (rows sharing a ``group_ids`` entry), so group-level statistics computed inside a
        micro-batch (e.g. the ``group_no_correct`` mask) see the whole group; a unit larger than
        the budget gets a micro-batch of its own. Returns a list of Long index tensors."""
        lengths = self.num_tokens.tolist()
        units: List[List[int]] = []
        if keep_groups:
            by_group: Dict[int, List[int]] = {}
            for i, g in enumerate(self.group_ids.tolist()):
                by_group.setdefault(g, []).append(i)
            units = sorted(by_group.values())
        else:
            units = [[i] for i in range(len(lengths))]
        groups: List[List[int]] = []
        current: List[int] = []
        longest = 0
        for unit in units:
            new_longest = max([longest] + [lengths[i] for i in unit])
            if current and new_longest * (len(current) + len(unit)) > max_tokens:
                groups.append(current)
                current, new_longest = [], max(lengths[i] for i in unit)
            current.extend(unit)
            longest = new_longest
        if current:
            groups.append(current)
        return [torch.tensor(sorted(g), dtype=torch.long) for g in groups]

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict of tensors, dicts and lists: ``torch.save`` / ``torch.load(weights_only=True)`` safe
        (a ``TopK`` becomes a dict of its fields: weights_only loading refuses named tuples)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["topk"] = {k: v._asdict() for k, v in self.topk.items()}
        return out

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> "Batch":
        d = dict(d)
        d["topk"] = {k: TopK(**v) for k, v in d.get("topk", {}).items()}  # older stores have no topk
        return Batch(**d)

    def set_scores(self, role: str, scores: Any) -> None:
        """Store a scorer's output for ``role``: a Float [B, R] log-prob tensor, or a
        ``(log-probs, TopK)`` pair from a scorer with ``top_k_logits > 0``."""
        if isinstance(scores, tuple) and not isinstance(scores, TopK):
            self.logprobs[role], self.topk[role] = scores
        else:
            self.logprobs[role] = scores
        self.validate()

    def to(self, device: torch.device | str) -> "Batch":
        out = Batch.__new__(Batch)
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device)
            elif f.name == "logprobs":
                v = {k: t.to(device) for k, t in v.items()}
            elif f.name == "topk":
                v = {k: TopK(*(t.to(device) for t in top)) for k, top in v.items()}
            setattr(out, f.name, v)
        return out
