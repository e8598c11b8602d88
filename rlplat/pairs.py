"""Preference pairs for offline training (f-DPO): their ``Batch`` layout and the trainer's pair loss.

A batch of P pairs has 2P rows, the chosen response of a pair directly before its rejected one:

    group_ids  Long  [2P]  the pair's id, shared by its two rows (so micro-batches and ranks keep
                           a pair together: ``Batch.split_by_token_budget(keep_groups=True)``)
    rewards    Float [2P]  1.0 on the chosen row, 0.0 on the rejected one
    logprobs["reference"]  Float [2P, R]  per-token log-probs under pi_ref (scored once, stored)

``PairLoss`` is a loss spec for ``actors.trainer`` (``totals``, ``component_tokens``, ``__call__``):
``sum over pairs of rlplat.losses.fdpo_loss / global number of pairs``, so micro-batching and data
parallelism give exactly the gradient of the mean over the whole mini-batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from rlplat.batch import Batch
from rlplat.data import PromptRow
from rlplat.losses import LossTotals, fdpo_loss, fdpo_metrics

PAIRS_KEY = "pairs"  # the pair loss's entry in a totals mapping
# Metrics of the pair loss live under "rewards/" (TRL's names for DPO): averaged over pairs.
METRICS_KEY = "rewards"


def pair_batch(rows: Sequence[PromptRow], prompt_ids: Sequence[Sequence[int]], encode: Callable[[str], List[int]],
               eos_id: int, pad_id: int) -> Batch:
    """The 2P-row batch of ``rows`` (each with ``extra["chosen"]`` / ``extra["rejected"]`` texts)
    whose rendered prompts are ``prompt_ids``. A response is ``encode(text) + [eos_id]``, as a
    sampled response ends; group id = position of the pair in ``rows``."""
    if len(rows) != len(prompt_ids):
        raise ValueError(f"pair_batch: {len(rows)} pairs but {len(prompt_ids)} rendered prompts")
    prompts, responses, texts = [], [], []
    for row, ids in zip(rows, prompt_ids):
        for name in ("chosen", "rejected"):
            text = row.extra[name]
            prompts.append(list(ids))
            responses.append(list(encode(text)) + [eos_id])
            texts.append(text)
    p, r = max(map(len, prompts)), max(map(len, responses))
    prompt_ids_t = torch.full((len(prompts), p), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(prompts), p), dtype=torch.long)
    response_ids = torch.full((len(prompts), r), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(prompts), r))
    for i, (ids, resp) in enumerate(zip(prompts, responses)):
        prompt_ids_t[i, p - len(ids):], prompt_mask[i, p - len(ids):] = torch.tensor(ids), 1
        response_ids[i, :len(resp)], response_mask[i, :len(resp)] = torch.tensor(resp), 1.0
    return Batch(
        prompt_ids=prompt_ids_t, prompt_mask=prompt_mask, response_ids=response_ids, response_mask=response_mask,
        group_ids=torch.arange(len(rows)).repeat_interleave(2), rewards=torch.tensor([1.0, 0.0]).repeat(len(rows)),
        meta={"prompt": [row.prompt for row in rows for _ in range(2)], "answer": [row.answer for row in rows for _ in range(2)],
              "row_index": [row.index for row in rows for _ in range(2)], "response_text": texts},
    )


def pair_rows(batch: Batch) -> Tuple[torch.Tensor, torch.Tensor]:
    """(chosen row indices Long [P], rejected row indices Long [P]), pair by pair in group order.
    Raises ``ValueError`` unless every group holds exactly one chosen and one rejected row."""
    order = torch.argsort(batch.group_ids * 2 + (batch.rewards <= 0.5).long(), stable=True)
    chosen, rejected = order[0::2], order[1::2]
    ok = (len(order) % 2 == 0 and bool((batch.group_ids[chosen] == batch.group_ids[rejected]).all())
          and bool((batch.rewards[chosen] > 0.5).all()) and bool((batch.rewards[rejected] <= 0.5).all()))
    if not ok:
        raise ValueError("pair batch: every group must hold one chosen (reward 1) and one rejected (reward 0) row")
    return chosen, rejected


def sequence_logprobs(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Float [B]: sum of the per-token log-probs Float [B, R] over the response tokens (nats)."""
    return (logp * mask).sum(-1)


@dataclass(frozen=True)
class PairLoss:
    """f-DPO over pair batches: ``divergence`` a name in ``rlplat.divergences.links.LINKS``."""

    divergence: str
    beta: float
    alpha: float = 0.5

    def totals(self, batch: Batch, world_size: int) -> Dict[str, LossTotals]:
        """Global normaliser: the pairs of the whole mini-batch (``seqs``) on ``world_size`` ranks."""
        return {PAIRS_KEY: LossTotals(float(batch.response_mask.sum()), len(batch) / 2, world_size)}

    def component_tokens(self, batch: Batch) -> Dict[str, float]:
        """Weight of this micro-batch's ``rewards/*`` metrics (means over pairs): its pairs."""
        return {METRICS_KEY: len(batch) / 2}

    def pair_terms(self, logp: torch.Tensor, batch: Batch) -> Tuple[torch.Tensor, ...]:
        """(policy chosen, policy rejected, reference chosen, reference rejected) sequence log-probs, Float [P] each."""
        chosen, rejected = pair_rows(batch)
        mask = batch.response_mask.to(logp.dtype)
        policy = sequence_logprobs(logp, mask)
        ref = sequence_logprobs(batch.logprobs["reference"].to(logp.dtype), mask)
        return policy[chosen], policy[rejected], ref[chosen], ref[rejected]

    def __call__(self, logp: torch.Tensor, batch: Batch, step: int, totals: Optional[Dict[str, LossTotals]] = None,
                 entropy: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
        """``logp`` Float [2P, R]: the policy's per-token log-probs of ``batch`` (with gradient).
        Returns (loss, metrics); ``step`` is unused (no schedule)."""
        terms = self.pair_terms(logp, batch)
        losses = fdpo_loss(*terms, divergence=self.divergence, beta=self.beta, alpha=self.alpha)
        t = (totals or {}).get(PAIRS_KEY)
        loss = losses.sum() / t.seqs * t.world_size if t is not None else losses.mean()
        metrics = {"loss/fdpo": float(loss.detach()), "loss/total": float(loss.detach()),
                   **fdpo_metrics(*terms, divergence=self.divergence, beta=self.beta, alpha=self.alpha)}
        if entropy is not None:
            mask = batch.response_mask
            metrics["actor/entropy"] = float((entropy.detach() * mask).sum() / mask.sum().clamp(min=1))
        return loss, metrics

    def preference_probs(self, policy_logprobs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Float [P]: the model's implicit P(chosen > rejected) = sigmoid(beta (f'(u_w) - f'(u_l)))
        of each pair, from the policy's per-token log-probs Float [2P, R] of ``batch`` (no gradient)."""
        from rlplat.losses import fdpo_implicit_rewards

        pc, pr, rc, rr = self.pair_terms(policy_logprobs, batch)
        margin = (fdpo_implicit_rewards(pc, rc, self.divergence, self.beta, self.alpha)
                  - fdpo_implicit_rewards(pr, rr, self.divergence, self.beta, self.alpha))
        return torch.sigmoid(margin.detach())


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> float:
    """ECE = sum_b |B_b| / n * |mean(labels in b) - mean(probs in b)| over ``bins`` equal-width bins of
    the predicted probabilities Float [n] in [0, 1] (labels Float/Bool [n] in {0, 1}); a probability
    of exactly 1 falls in the last bin."""
    probs, labels = probs.double().flatten(), labels.double().flatten()
    if probs.numel() == 0 or probs.numel() != labels.numel():
        raise ValueError(f"expected_calibration_error: {probs.numel()} probabilities and {labels.numel()} labels")
    which = (probs * bins).long().clamp(max=bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if bool(sel.any()):
            ece += float(sel.sum()) / probs.numel() * abs(float(labels[sel].mean() - probs[sel].mean()))
    return ece


def pair_calibration(probs: torch.Tensor, bins: int = 10) -> Dict[str, float]:
    """Held-out pair metrics from P(chosen > rejected) Float [P]: ``accuracy`` (P > 1/2), the mean
    probability and ``ece``. Each pair is scored in both orders ((p, chosen first: 1) and (1 - p,
    rejected first: 0)), as a judge that sees pairs in random order would be, so the calibration
    curve covers [0, 1] and a model that always says 1/2 has ECE 0 (and accuracy 0)."""
    both = torch.cat([probs, 1 - probs])
    labels = torch.cat([torch.ones_like(probs), torch.zeros_like(probs)])
    return {"accuracy": float((probs > 0.5).float().mean()), "preference_prob": float(probs.mean()),
            "ece": expected_calibration_error(both, labels, bins)}


__all__ = ["METRICS_KEY", "PAIRS_KEY", "PairLoss", "expected_calibration_error", "pair_batch", "pair_calibration",
           "pair_rows", "sequence_logprobs"]
