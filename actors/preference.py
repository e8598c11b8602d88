"""Pairwise preferences P(a > b | prompt) for Nash-MP, off the driver.

Two sources: a rule-based judge ``module:function`` with signature
``judge(prompt, response_a, response_b, answer) -> float in [0, 1]``, or a Bradley-Terry reward
model loaded as an HF sequence-classification model, for which ``P(a > b) = sigmoid(r(a) - r(b))``.
A judge that raises or returns a non-number is counted (``preference/errors``) and its pair gets
no preference (NaN, excluded by the caller), never a silent 0.5.
"""
from __future__ import annotations

import math
import traceback
from typing import Dict, List, Optional, Sequence, Tuple

import torch


class PreferenceWorker:
    def __init__(self, judge: Optional[str], model_path: Optional[str], dtype: str = "float32") -> None:
        if judge:
            from rlplat.rewards import resolve_judge

            self.judge = resolve_judge(judge)
            self.model = None
        else:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            self.judge = None
            self.tok = AutoTokenizer.from_pretrained(model_path)
            self.model = AutoModelForSequenceClassification.from_pretrained(model_path, torch_dtype=getattr(torch, dtype)).eval()

    def ready(self) -> bool:
        return True

    def win_probs(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], answers: Sequence[Optional[str]]) -> Tuple[torch.Tensor, Dict[str, float], List[str]]:
        """Float [N] of P(a_i > b_i) (NaN where the judge failed), metrics, failure messages."""
        if self.model is not None:
            ra, rb = self._rewards(prompts, a), self._rewards(prompts, b)
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
    def _rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        enc = self.tok([p + r for p, r in zip(prompts, responses)], return_tensors="pt", padding=True)
        return self.model(**enc).logits[:, 0].float()
