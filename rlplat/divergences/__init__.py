"""Pluggable divergence terms D(pi, anchor): one registry of estimator factories.

Every entry is a *factory*: ``get(name, **params)`` calls it with the params and returns
the estimator ``fn``. Two call shapes exist, told apart by ``info(name)``:

* ``info(name) == "policy"`` (k1, k2, k3, k3_st) and ``"anchor"`` (forward_kl, js, alpha, tv):
  ``fn(logp, anchor_logp) -> values``. ``logp`` and ``anchor_logp`` are log-probabilities (nats)
  of the *sampled* tokens, any shape ``[...]`` (usually ``[B, R]``), equal shapes; ``values`` has
  that same shape, one value per token. "policy" estimators assume the tokens were sampled
  from pi (on-policy rollouts); "anchor" estimators assume they were sampled from the anchor
  (e.g. DPH-RL's stored pi_0 samples).
* ``info(name) == "full"`` (full_forward_kl, full_reverse_kl, full_jsd):
  ``fn(logits, anchor_logits) -> values``, logits ``[..., V]``, values ``[...]``: the exact
  divergence between the two next-token distributions at each position, computed in chunks.
  ``sinkhorn`` (SinKD) has the same call shape but couples the positions: its values are each
  position's share of one batch-wise transport cost (``rlplat/divergences/sinkhorn.py``).
  ``rlplat.divergences.topk`` evaluates the per-position ones against a teacher's top-k.

All estimators are differentiable in their first argument only; the anchor is detached.
Adding one::

    @register("my_div", samples="policy")
    def my_div(scale: float = 1.0):
        def fn(logp, anchor_logp):
            return scale * (logp - anchor_logp.detach()) ** 2
        return fn

Unknown names raise ``KeyError`` listing the registered names; unknown params or bad param
values raise ``ValueError`` naming the param.
"""
from rlplat.divergences import full, per_token, sinkhorn  # noqa: F401  (register the built-ins)
from rlplat.divergences.registry import (  # noqa: F401  (the package's interface)
    _REGISTRY, SAMPLES, DivergenceFn, Factory, get, info, names, params, register)
