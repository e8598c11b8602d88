"""Pairwise preferences P(a > b | prompt) for Nash-MP, off the driver.

Two sources: a rule-based judge (a name in ``rlplat.rewards.judges.JUDGES`` or ``module:function``) with signature
``judge(prompt, response_a, response_b, answer) -> float in [0, 1]``, or a Bradley-Terry reward
model loaded as an HF sequence-classification model, for which ``P(a > b) = sigmoid(r(a) - r(b))``.
A judge that raises or returns a non-number is counted (``preference/errors``) and its pair gets
no preference (NaN, excluded by the caller), never a silent 0.5.

The reward model scores each distinct ``prompt + response`` text once, in forward passes of at
most ``micro_batch_tokens`` padded tokens (rows x longest row; ``roles.preference.micro_batch_tokens``),
longest texts first so rows of similar length share a pass. Positions count from each row's first
real token, so a text's reward does not depend on the rows padded next to it.
"""
from __future__ import annotations

import inspect
import math
import traceback
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from actors import quiet


def token_budget_batches(lengths: Sequence[int], max_tokens: int) -> List[List[int]]:
    """Indices of ``lengths`` in batches whose padded size (rows x longest) is at most
    ``max_tokens``, longest first; a row longer than the budget gets a batch of its own."""
    batches: List[List[int]] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        # Sorted descending: the batch's first row is its longest.
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class PreferenceWorker:
    """``micro_batch_tokens``: token budget of one reward-model forward pass."""

    def __init__(self, judge: Optional[str], model_path: Optional[str], dtype: str = "float32",
                 micro_batch_tokens: int = 4096, trust_remote_code: bool = False) -> None:
        quiet.apply()  # third-party log noise off (trainer.log_level, via RLPLAT_LOG_LEVEL)
        if micro_batch_tokens <= 0:
            raise ValueError(f"roles.preference.micro_batch_tokens must be > 0, got {micro_batch_tokens}")
        self.micro_batch_tokens = micro_batch_tokens
        if judge:
            from rlplat.rewards import resolve_judge

            self.judge = resolve_judge(judge)
            self.model = None
        else:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            self.judge = None
            self.tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                model_path, torch_dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code).eval()
            self._takes_positions = "position_ids" in inspect.signature(self.model.forward).parameters

    def ready(self) -> bool:
        return True

    def win_probs(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], answers: Sequence[Optional[str]]) -> Tuple[torch.Tensor, Dict[str, float], List[str]]:
        """Float [N] of P(a_i > b_i) (NaN where the judge failed), metrics, failure messages."""
        if self.model is not None:
            texts = [p + x for p, x in zip(prompts, a)] + [p + y for p, y in zip(prompts, b)]
            unique = list(dict.fromkeys(texts))  # a response meets many opponents: score it once
            where = {t: k for k, t in enumerate(unique)}
            r = self._rewards(unique)[torch.tensor([where[t] for t in texts], dtype=torch.long)]
            ra, rb = r[: len(a)], r[len(a):]
            return torch.sigmoid(ra - rb), {"preference/errors": 0.0}, []
        out, failures = [], []
        for i, (p, x, y, ans) in enumerate(zip(prompts, a, b, answers)):
            try:
                v = float(self.judge(p, x, y, ans))
                if not (0.0 <= v <= 1.0) or math.isnan(v):
                    raise ValueError(f"judge returned {v}, expected a probability in [0, 1]")
            except Exception:  # user code: count and report every failure
                failures.append(f"pair {i}: {traceback.format_exc(limit=2).strip().splitlines()[-1]}")
                v = float("nan")
            out.append(v)
        return torch.tensor(out), {"preference/errors": float(len(failures))}, failures

    @torch.no_grad()
    def _rewards(self, texts: Sequence[str]) -> torch.Tensor:
        """Float32 [N]: the reward model's first logit for each text."""
        ids = self.tok(list(texts))["input_ids"]
        out = torch.zeros(len(ids), dtype=torch.float32)
        for idx in token_budget_batches([len(x) for x in ids], self.micro_batch_tokens):
            enc = self.tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            kwargs = {}
            if self._takes_positions:  # left padding must not shift the real tokens' positions
                kwargs["position_ids"] = (enc["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **kwargs).logits
            out[torch.tensor(idx, dtype=torch.long)] = logits[:, 0].float()
        return out
