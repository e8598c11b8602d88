"""Rollout engines (vLLM and HF) in real Ray actors: Batch layout, the sampler's log-probs (at the
temperature, after top-k/top-p) and the raw ``sequence_logprobs`` against an HF forward pass, and
in-place weight sync through the object store."""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import pytest
import torch

from actors.rollout import ROLLOUT_BACKENDS, Sample, build_rollout_batch, make_engine
from actors.rollout.weights import PackedWeights, as_named_tensors, pack, unpack
from rlplat.config.schema import RolloutConfig
from rlplat.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, save_tokenizer, vocab_size
from rlplat.seeds import ROLLOUT, stream_seed

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-3  # nats; float32 on both sides, different kernels


# ------------------------------------------------------------------ fast unit tests
def test_pack_unpack_roundtrip_keeps_dtype_shape_and_values():
    weights = {
        "a.weight": torch.randn(3, 5),
        "b.bias": torch.randn(7).to(torch.bfloat16),
        "c.scalar": torch.tensor(2.5, dtype=torch.float16),
        "d.empty": torch.zeros(0, 4),
        "e.ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    }
    packed = pack(weights)
    assert isinstance(packed, PackedWeights) and len(packed) == 5
    assert all(off % 64 == 0 for off in packed.offsets)
    out = dict(unpack(packed))
    assert list(out) == list(weights)
    for name, t in weights.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape, name
        assert torch.equal(out[name], t), name
    # views, not copies: the buffer is shared
    assert out["a.weight"].untyped_storage().data_ptr() == torch.from_numpy(packed.buffer).data_ptr()


def test_as_named_tensors_rejects_non_tensors():
    assert [n for n, _ in as_named_tensors({"x": torch.ones(1)})] == ["x"]
    assert [n for n, _ in as_named_tensors([["x", torch.ones(1)]])] == ["x"]
    with pytest.raises(TypeError, match="name, torch.Tensor"):
        as_named_tensors([("x", [1.0])])


def test_build_rollout_batch_layout():
    prompts = [[BOS_ID, 5, 6], [BOS_ID]]
    samples = [
        [Sample([7, EOS_ID], [-1.0, -2.0], "x", "stop"), Sample([8, 9, 10], [-0.5] * 3, "yzw", "length")],
        [Sample([11], [-3.0], "q", "length"), Sample([EOS_ID], [-0.1], "", "stop")],
    ]
    b = build_rollout_batch(prompts, samples, group_offset=4, pad_id=PAD_ID, meta={"answer": ["A", "B"]}, weight_version=3)
    assert b.prompt_ids.tolist() == [[1, 5, 6], [1, 5, 6], [0, 0, 1], [0, 0, 1]]
    assert b.prompt_mask.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 1]]
    assert b.response_ids.tolist() == [[7, EOS_ID, 0], [8, 9, 10], [11, 0, 0], [EOS_ID, 0, 0]]
    assert b.response_mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 0, 0]]
    expected = torch.tensor([[-1, -2, 0], [-0.5, -0.5, -0.5], [-3, 0, 0], [-0.1, 0, 0]])
    assert torch.allclose(b.logprobs["rollout"], expected)
    assert b.group_ids.tolist() == [4, 4, 5, 5]
    assert b.meta == {
        "answer": ["A", "A", "B", "B"],
        "response_text": ["x", "yzw", "q", ""],
        "finish_reason": ["stop", "length", "length", "stop"],
        "weight_version": [3, 3, 3, 3],
    }
    with pytest.raises(ValueError, match="meta\\['answer'\\] has 1 entries"):
        build_rollout_batch(prompts, samples, 0, PAD_ID, meta={"answer": ["A"]})


def test_unknown_backend_is_named():
    assert ROLLOUT_BACKENDS.names() == ["hf", "vllm"]
    with pytest.raises(KeyError, match="unknown rollout backend 'sglang'"):
        make_engine("sglang")


# ------------------------------------------------------------- engines in Ray actors
def _build_tiny_llama(out_dir: Path) -> Path:
    """A random 2-layer Llama over the character tokenizer (head_dim 32: vLLM's CPU
    attention needs >= 32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).save_pretrained(out_dir)
    save_tokenizer(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return _build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def _hf_logprobs(model, prompt, response, temperature=1.0, top_k=-1, top_p=1.0):
    """Float [len(response)]: log mu(response[t] | prompt, response[:t]) from one HF forward, where
    mu is the sampling distribution: softmax(logits / temperature) restricted to the top_k most
    likely tokens (<= 0: all), then to the smallest most-likely set holding >= top_p of the mass,
    renormalised. The defaults give the raw model log-probs."""
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    if top_k > 0:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        probs, order = logits.softmax(-1).sort(dim=-1, descending=True)
        mass_before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, mass_before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def _check_batch_against(batch, model, prompts, group_size, group_offset, tokenizer, rollout):
    """Layout of a rollout Batch, and its rollout log-probs against ``model`` (HF) sampled with
    ``rollout``'s temperature / top-k / top-p."""
    max_new_tokens = rollout.max_new_tokens
    n = len(prompts) * group_size
    assert len(batch) == n
    expected_groups = [group_offset + i for i in range(len(prompts)) for _ in range(group_size)]
    assert batch.group_ids.tolist() == expected_groups
    p = max(len(x) for x in prompts)
    assert batch.prompt_ids.shape[1] == p
    for row in range(n):
        prompt = prompts[row // group_size]
        assert batch.prompt_ids[row, p - len(prompt):].tolist() == prompt
        assert batch.prompt_mask[row].tolist() == [0] * (p - len(prompt)) + [1] * len(prompt)
        k = int(batch.response_mask[row].sum())
        assert 1 <= k <= max_new_tokens
        assert batch.response_mask[row, :k].eq(1).all() and batch.response_mask[row, k:].eq(0).all()
        response = batch.response_ids[row, :k].tolist()
        assert batch.response_ids[row, k:].eq(PAD_ID).all()
        assert batch.logprobs["rollout"][row, k:].eq(0).all()
        assert EOS_ID not in response[:-1], "generation continued after EOS"
        if batch.meta["finish_reason"][row] == "stop":
            assert response[-1] == EOS_ID
        else:
            assert batch.meta["finish_reason"][row] == "length"
            assert k == max_new_tokens and response[-1] != EOS_ID
        assert batch.meta["response_text"][row] == tokenizer.decode(response, skip_special_tokens=True)
        ref = _hf_logprobs(model, prompt, response, rollout.temperature, rollout.top_k, rollout.top_p)
        got = batch.logprobs["rollout"][row, :k]
        assert torch.allclose(got, ref, atol=TOL), f"row {row}: max |diff| {(got - ref).abs().max():.2e}"


def _eos_first_weights(model):
    """Weights under which EOS is the first token of every response with probability ~1.

    Residual dimension 0 is a positive constant (every embedding has it, no layer writes to it),
    the final norm keeps only that dimension, and the unembedding row of EOS reads it twice as
    strongly as every other row, so logit(EOS) - logit(other) = 100 * h_0 >> 0 everywhere.
    """
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.model.embed_tokens.weight[:, 0] = 100.0
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight[0].zero_()
            layer.mlp.down_proj.weight[0].zero_()
        m.model.norm.weight.zero_()
        m.model.norm.weight[0] = 1.0
        m.lm_head.weight.zero_()
        m.lm_head.weight[:, 0] = 100.0
        m.lm_head.weight[EOS_ID, 0] = 200.0
    return m


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.5, 3, 1.0), (0.7, -1, 0.6), (1.0, -1, 1.0)])
def test_hf_engine_reports_the_sampling_distributions_logprobs(tiny_model, temperature, top_k, top_p):
    """``logprobs["rollout"]`` is log mu at the sampling temperature, renormalised over the tokens
    top-k / top-p keep (what the trainer's tempered log-prob equals without truncation); the
    sequence_logprobs probe stays raw (temperature 1, untruncated)."""
    from transformers import AutoModelForCausalLM

    rollout = RolloutConfig(backend="hf", max_new_tokens=8, temperature=temperature, top_k=top_k, top_p=top_p)
    engine = make_engine("hf", model_path=str(tiny_model), tokenizer_path=str(tiny_model), rollout=rollout,
                         dtype="float32", seed=0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    prompts = [[BOS_ID, 5, 6, 7], [BOS_ID, 9]]
    batch = engine.generate(prompts, 4, 0, PAD_ID)
    truncated = top_k > 0 or top_p < 1
    for row in range(len(batch)):
        k = int(batch.response_mask[row].sum())
        prompt, response = prompts[row // 4], batch.response_ids[row, :k].tolist()
        got = batch.logprobs["rollout"][row, :k]
        mu = _hf_logprobs(model, prompt, response, temperature, top_k, top_p)
        assert torch.isfinite(mu).all(), "sampled a token the truncation removes"
        assert torch.allclose(got, mu, atol=TOL), f"row {row}: max |diff| {(got - mu).abs().max():.2e}"
        tempered = _hf_logprobs(model, prompt, response, temperature)  # the trainer's "old"
        if truncated:
            assert (tempered <= got + TOL).all()  # lp_old - lp_rollout = log Z_kept <= 0
        else:
            assert torch.allclose(got, tempered, atol=TOL)
        raw = torch.tensor(engine.sequence_logprobs(prompt, response))
        assert torch.allclose(raw, _hf_logprobs(model, prompt, response), atol=TOL)
        if temperature != 1.0:
            assert (raw - got).abs().max() > 10 * TOL  # the two quantities really differ here


def test_hf_engine_samples_by_stream_seed(tiny_model):
    """Same rlplat.seeds seed, same samples; the next step's stream, other samples. A seed near
    2**32 is taken too (its later samples' seeds pass 2**32; torch reads them mod 2**32)."""
    engine = make_engine("hf", model_path=str(tiny_model), tokenizer_path=str(tiny_model),
                         rollout=RolloutConfig(backend="hf", max_new_tokens=8), dtype="float32", seed=0)
    prompts = [[BOS_ID, 5, 6, 7], [BOS_ID, 9]]
    seed = stream_seed(3, 5, ROLLOUT)
    a, b = (engine.generate(prompts, 4, 0, PAD_ID, seed=seed) for _ in range(2))
    assert torch.equal(a.response_ids, b.response_ids)
    other = engine.generate(prompts, 4, 0, PAD_ID, seed=stream_seed(3, 6, ROLLOUT))
    assert not torch.equal(a.response_ids, other.response_ids)
    top = [engine.generate(prompts, 4, 0, PAD_ID, seed=2**32 - 2) for _ in range(2)]
    assert torch.equal(top[0].response_ids, top[1].response_ids)



def test_an_engine_whose_load_failed_refuses_to_sample_until_loaded_again(tiny_model):
    """A load that breaks half-way leaves the engine at ``LOADING``: a versioned generate raises
    ``StaleWeightsError`` (what the engine pool recovers from) instead of sampling from
    half-loaded weights; a whole load makes it sample again."""
    from actors.rollout import LOADING, StaleWeightsError

    engine = make_engine("hf", model_path=str(tiny_model), tokenizer_path=str(tiny_model),
                         rollout=RolloutConfig(backend="hf", max_new_tokens=4), dtype="float32", seed=0)
    good = [(n, t.detach().clone()) for n, t in engine.model.state_dict().items()]
    broken = [good[0], (good[1][0], torch.zeros(3, 3))]  # the second tensor has the wrong shape
    with pytest.raises(ValueError, match=good[1][0]):
        engine.update_weights(broken, version=1)
    assert engine.weight_version == LOADING
    with pytest.raises(StaleWeightsError, match="version -1"):
        engine.generate([[BOS_ID, 5]], 2, 0, PAD_ID, weight_version=1)
    engine.update_weights(good, version=1)
    assert engine.generate([[BOS_ID, 5]], 2, 0, PAD_ID, weight_version=1).meta["weight_version"] == [1, 1]

BACKENDS = ("hf", "vllm")
MAX_NEW_TOKENS = 12


def _rollout_config(backend):
    """Tempered and truncated sampling, so both engines' log-probs are checked at the temperature,
    after top-k and top-p, against the same HF reference (hence against each other)."""
    return RolloutConfig(
        backend=backend, max_new_tokens=MAX_NEW_TOKENS, temperature=0.7, top_k=40, top_p=0.9, max_model_len=256,
        max_num_seqs=16, cpu_kv_cache_gb=0.02, enforce_eager=True,
    )


@pytest.fixture(scope="module")
def engines(ray_cluster, tiny_model):
    """backend -> (launch time, actor): all engines start at once so their start-ups overlap."""
    ray = ray_cluster
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    launched = {}
    for backend in BACKENDS:
        actor_cls = ray.remote(num_cpus=0.5, runtime_env={"env_vars": env})(ROLLOUT_BACKENDS.get(backend))
        launched[backend] = (
            time.perf_counter(),
            actor_cls.remote(str(tiny_model), str(tiny_model), _rollout_config(backend), "float32", 0),
        )
    yield launched
    for _, actor in launched.values():
        ray.kill(actor)


@pytest.mark.runtime
@pytest.mark.parametrize("backend", BACKENDS)
def test_engine_actor_generates_and_syncs_weights(backend, ray_cluster, tiny_model, engines):
    ray = ray_cluster
    from transformers import AutoModelForCausalLM, AutoTokenizer

    launched_at, engine = engines[backend]
    assert ray.get(engine.ready.remote()) is True
    start_s = time.perf_counter() - launched_at
    info = ray.get(engine.info.remote())
    assert info["backend"] == backend and info["pid"] != os.getpid()

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    prompts = [tokenizer("12+3=")["input_ids"], tokenizer("7*8=")["input_ids"][:3]]
    # Longer than vLLM's CPU KV block (128 tokens), so its first block lands in the prefix cache.
    long_prompt = tokenizer("0123456789" * 14)["input_ids"]

    t0 = time.perf_counter()
    batch = ray.get(engine.generate.remote(prompts, 3, 10, PAD_ID, {"answer": ["15", "56"]}))
    gen_s = time.perf_counter() - t0
    assert batch.meta["answer"] == ["15"] * 3 + ["56"] * 3
    _check_batch_against(batch, model, prompts, 3, 10, tokenizer, _rollout_config(backend))
    ray.get(engine.generate.remote([long_prompt], 2, 0, PAD_ID))
    # Seeds as rlplat.seeds makes them: the same seed samples the same responses, the next
    # step's stream others; near 2**32 the children's seeds (seed + j) pass 2**32 and still work.
    seeded = [ray.get(engine.generate.remote(prompts, 3, 0, PAD_ID, None, sd))
              for sd in (stream_seed(3, 5, ROLLOUT), stream_seed(3, 5, ROLLOUT), stream_seed(3, 6, ROLLOUT), 2**32 - 2)]
    assert torch.equal(seeded[0].response_ids, seeded[1].response_ids)
    assert not torch.equal(seeded[0].response_ids, seeded[2].response_ids)
    assert len(seeded[3]) == 6

    # Perturb every parameter and push the result through the object store.
    perturbed = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in perturbed.parameters():
            param.add_(0.05 * torch.randn_like(param))
    response = batch.response_ids[0, : int(batch.response_mask[0].sum())].tolist()
    before = torch.tensor(ray.get(engine.sequence_logprobs.remote(prompts[0], response)))
    assert torch.allclose(before, _hf_logprobs(model, prompts[0], response), atol=TOL)
    sync_s = ray.get(engine.update_weights.remote(ray.put(pack(perturbed.state_dict()))))
    after = torch.tensor(ray.get(engine.sequence_logprobs.remote(prompts[0], response)))
    expected = _hf_logprobs(perturbed, prompts[0], response)
    assert torch.allclose(after, expected, atol=TOL), f"max |diff| {(after - expected).abs().max():.2e}"
    assert (after - before).abs().max() > 10 * TOL
    # No stale KV: the long prompt's cached block was computed with the old weights.
    again = ray.get(engine.generate.remote([long_prompt], 2, 0, PAD_ID))
    _check_batch_against(again, perturbed, [long_prompt], 2, 0, tokenizer, _rollout_config(backend))

    # A sync the sampler must see: every response is now just EOS, masked as one real token.
    ray.get(engine.update_weights.remote(_eos_first_weights(model).state_dict()))
    eos = ray.get(engine.generate.remote(prompts, 3, 0, PAD_ID))
    assert eos.response_ids.tolist() == [[EOS_ID]] * 6
    assert eos.response_mask.tolist() == [[1.0]] * 6
    assert eos.meta["finish_reason"] == ["stop"] * 6 and eos.meta["response_text"] == [""] * 6
    assert eos.logprobs["rollout"].abs().max() < TOL
    assert ray.get(engine.info.remote())["weight_version"] == 2

    print(f"\n[{backend}] actor start {start_s:.1f}s (from launch, overlapping the other engine), first "
          f"generate (6 x <={MAX_NEW_TOKENS} tokens) {gen_s:.2f}s, weight sync {sync_s['seconds'] * 1e3:.0f}ms")


# ------------------------------------------------------------- rollout.ignore_eos
IGNORE_EOS_TOKENS = 6


def _save_eos_first_model(tiny_model, out_dir: Path) -> Path:
    """``_eos_first_weights`` of the tiny Llama saved as a model directory: a model that ends
    every response with its first token unless EOS is ignored."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    _eos_first_weights(model).save_pretrained(out_dir)
    save_tokenizer(out_dir)
    return out_dir


def _assert_full_length_without_eos(batch, rows):
    """Every response has exactly IGNORE_EOS_TOKENS tokens, none of them EOS, with the sampler's
    log-probs: under the EOS-first weights the other tokens are about equally likely once EOS is
    masked, so each sampled token has log-prob ~ -log(V - 1) of the distribution it was drawn from
    (the raw, unmasked log-prob would be < -50)."""
    assert len(batch) == rows
    assert batch.response_mask.shape[1] == IGNORE_EOS_TOKENS
    assert batch.response_mask.eq(1).all(), batch.response_mask.sum(1).tolist()
    assert not batch.response_ids.eq(EOS_ID).any()
    assert batch.meta["finish_reason"] == ["length"] * rows
    lp = batch.logprobs["rollout"]
    assert ((lp > -6) & (lp < -3)).all(), lp


def test_hf_engine_ignore_eos_fills_max_new_tokens_and_evaluation_overrides_it(tiny_model, tmp_path):
    """rollout.ignore_eos=true: the HF engine never stops at EOS, even on weights that sample EOS
    first with probability ~1; ``generate(..., ignore_eos=False)`` (evaluation's call) stops there."""
    model_dir = _save_eos_first_model(tiny_model, tmp_path / "eos_first")
    rollout = RolloutConfig(backend="hf", max_new_tokens=IGNORE_EOS_TOKENS, ignore_eos=True, max_num_seqs=4)
    engine = make_engine("hf", model_path=str(model_dir), tokenizer_path=str(model_dir), rollout=rollout,
                         dtype="float32", seed=0)
    prompts = [[BOS_ID, 5, 6, 7], [BOS_ID, 9]]
    _assert_full_length_without_eos(engine.generate(prompts, 3, 0, PAD_ID), 6)  # 2 calls of <= 4 rows
    _assert_full_length_without_eos(engine.generate(prompts, 1, 0, PAD_ID, greedy=True), 2)
    stopped = engine.generate(prompts, 3, 0, PAD_ID, ignore_eos=False)
    assert stopped.response_ids.tolist() == [[EOS_ID]] * 6 and stopped.meta["finish_reason"] == ["stop"] * 6


@pytest.mark.runtime
def test_vllm_engine_actor_ignore_eos_fills_max_new_tokens(ray_cluster, tiny_model, tmp_path):
    """The same contract for the vLLM engine in a Ray actor (``ignore_eos`` + ``min_tokens``)."""
    ray = ray_cluster
    model_dir = _save_eos_first_model(tiny_model, tmp_path / "eos_first")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    rollout = RolloutConfig(backend="vllm", max_new_tokens=IGNORE_EOS_TOKENS, ignore_eos=True, max_model_len=256,
                            max_num_seqs=16, cpu_kv_cache_gb=0.02, enforce_eager=True)
    engine = ray.remote(num_cpus=0.5, runtime_env={"env_vars": env})(ROLLOUT_BACKENDS.get("vllm")).remote(
        str(model_dir), str(model_dir), rollout, "float32", 0)
    try:
        prompts = [[BOS_ID, 5, 6, 7], [BOS_ID, 9]]
        _assert_full_length_without_eos(ray.get(engine.generate.remote(prompts, 3, 0, PAD_ID, seed=3)), 6)
        _assert_full_length_without_eos(ray.get(engine.generate.remote(prompts, 1, 0, PAD_ID, greedy=True)), 2)
        stopped = ray.get(engine.generate.remote(prompts, 3, 0, PAD_ID, ignore_eos=False))
        assert stopped.response_ids.tolist() == [[EOS_ID]] * 6 and stopped.meta["finish_reason"] == ["stop"] * 6
    finally:
        ray.kill(engine)
