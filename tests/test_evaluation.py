"""pass@k estimator against brute-force subset enumeration, its summary over prompts, and the
``launch.evaluate`` CLI end to end on a tiny random Llama with the HF backend (greedy responses
checked against an argmax decode of the same model)."""
from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from rlplat.evaluation import EvalResult, check_ks, pass_at_k, summarize
from rlplat.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, save_tokenizer, vocab_size


def _brute_force(n: int, c: int, k: int) -> Fraction:
    """Share of the k-subsets of n samples (the first c correct) that hold a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


def test_pass_at_k_matches_subset_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(_brute_force(n, c, k)), abs=1e-12), (n, c, k)


def test_pass_at_k_edges_and_closed_forms():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 10) == 1.0  # k = n: any correct sample is in the one subset
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c / n
    # large n stays finite and exact to float precision (C(1000, 500) ~ 1e299)
    exact = 1 - Fraction(math.comb(1000 - 7, 500), math.comb(1000, 500))
    assert pass_at_k(1000, 7, 500) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("n,c,k,match", [
    (4, 1, 5, r"k=5 must be in \[1, n=4\]"),
    (4, 1, 0, r"k=0 must be in \[1, n=4\]"),
    (4, 5, 1, r"c=5 correct samples must be in \[0, n=4\]"),
    (4, -1, 1, r"c=-1"),
    (0, 0, 1, r"n=0"),
])
def test_pass_at_k_rejects_bad_arguments(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


def test_pass_at_k_rejects_non_integers():
    with pytest.raises(TypeError, match="k must be an int"):
        pass_at_k(4, 1, 1.0)
    with pytest.raises(TypeError, match="n must be an int"):
        pass_at_k(True, 1, 1)


def test_summarize_means_over_prompts():
    correct = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    out = summarize(correct, [4, 1, 2])
    assert list(out) == ["eval/pass@1", "eval/pass@2", "eval/pass@4"]
    assert out["eval/pass@1"] == pytest.approx((1 / 4 + 2 / 4 + 0) / 3)
    assert out["eval/pass@2"] == pytest.approx((0.5 + 5 / 6 + 0) / 3)
    assert out["eval/pass@4"] == pytest.approx(2 / 3)
    assert summarize(correct.float(), [2]) == pytest.approx({"eval/pass@2": out["eval/pass@2"]})
    with pytest.raises(ValueError, match=r"ks \[5\] are outside \[1, n=4\]"):
        summarize(correct, [1, 5])
    with pytest.raises(ValueError, match="shape"):
        summarize(torch.ones(4, dtype=torch.bool), [1])
    with pytest.raises(ValueError, match="NaN"):
        summarize(torch.tensor([[1.0, float("nan")]]), [1])
    assert check_ks([8, 1, 8], 8) == [1, 8]


def test_eval_result_json_has_no_nan():
    r = EvalResult(metrics={"eval/pass@1": 0.5, "eval/reward_mean": float("nan")}, n=2, ks=[1])
    assert json.loads(json.dumps(r.to_json()))["metrics"] == {"eval/pass@1": 0.5, "eval/reward_mean": None}


# ----------------------------------------------------------------------------- evaluate() with fakes
def _fake_generate(texts_of_prompt):
    """A GenerateFn whose j-th response to prompt i is ``texts_of_prompt(i, j, group_size)``."""
    from actors.rollout import Sample, build_rollout_batch

    def generate(prompt_ids, group_size, meta, seed=None):
        samples = [[Sample([5], [-1.0], texts_of_prompt(i, j, group_size), "stop") for j in range(group_size)]
                   for i in range(len(prompt_ids))]
        return build_rollout_batch(prompt_ids, samples, 0, PAD_ID, meta)

    return generate


def _fake_score(responses, answers, prompts, columns):
    """Reward 1 when the response equals the answer; the response "boom" fails (NaN, invalid)."""
    from rlplat.rewards.runner import RewardOutcome

    valid = torch.tensor([r != "boom" for r in responses])
    rewards = torch.tensor([float(r == a) if r != "boom" else float("nan") for r, a in zip(responses, answers)])
    return RewardOutcome(rewards=rewards, valid=valid, errors=int((~valid).sum()))


def test_evaluate_counts_greedy_sampled_and_failed_rewards():
    from rlplat.held_out import evaluate
    from rlplat.data import PromptRow

    rows = [PromptRow(prompt=f"{i}+0=", answer=str(i), index=10 + i) for i in range(3)]
    ids = [[BOS_ID, 4 + i] for i in range(3)]
    # prompt 0: 2 of 4 samples right; prompt 1: none right, one reward fails; prompt 2: all right.
    table = {0: ["0", "x", "0", "x"], 1: ["x", "boom", "x", "x"], 2: ["2"] * 4}
    sampled = _fake_generate(lambda i, j, g: table[i][j])
    greedy = _fake_generate(lambda i, j, g: str(i) if i != 1 else "boom")
    res = evaluate(sampled, rows, ids, _fake_score, n=4, ks=[1, 4], greedy_fn=greedy, keep_samples=True)
    m = res.metrics
    assert m["eval/pass@1"] == pytest.approx((2 / 4 + 0 + 1) / 3)
    assert m["eval/pass@4"] == pytest.approx(2 / 3)
    assert m["eval/pass@1_greedy"] == pytest.approx(2 / 3)
    assert m["eval/reward_invalid"] == 2.0  # one greedy, one sampled
    assert m["eval/reward_mean"] == pytest.approx(6 / 11)  # over the 11 valid sampled rewards
    assert [r["num_correct"] for r in res.records] == [2, 0, 4]
    assert [r["index"] for r in res.records] == [10, 11, 12]
    assert res.records[1]["greedy_reward"] is None and res.records[1]["rewards"][1] is None

    grouped = [PromptRow(prompt=r.prompt, answer=r.answer, index=r.index, extra={"family": f})
               for r, f in zip(rows, ["a", "b", "a"])]
    g = evaluate(sampled, grouped, ids, _fake_score, n=4, ks=[1, 4], greedy_fn=greedy, group_by="family").metrics
    assert g["eval/a/pass@1"] == pytest.approx((2 / 4 + 1) / 2) and g["eval/b/pass@1"] == 0.0
    assert g["eval/a/pass@4"] == 1.0 and g["eval/a/pass@1_greedy"] == 1.0 and g["eval/b/pass@1_greedy"] == 0.0
    assert (g["eval/a/num_prompts"], g["eval/b/num_prompts"]) == (2.0, 1.0)
    assert g["eval/pass@1"] == m["eval/pass@1"]  # the overall metrics do not change
    with pytest.raises(ValueError, match=r"held-out row 10 .* no column 'level' \(trainer.eval_group_by\)"):
        evaluate(sampled, grouped, ids, _fake_score, n=4, ks=[1], group_by="level")

    no_greedy = evaluate(sampled, rows, ids, _fake_score, n=4, ks=[1])
    assert "eval/pass@1_greedy" not in no_greedy.metrics and "greedy_response" not in no_greedy.records[0]

    def shuffled(prompt_ids, group_size, meta, seed=None):  # an engine pool that returns prompts out of order
        batch = sampled(prompt_ids, group_size, meta, seed)
        return batch.select(torch.arange(len(batch)).flip(0))

    with pytest.raises(RuntimeError, match="not laid out prompt-major"):
        evaluate(shuffled, rows, ids, _fake_score, n=4, ks=[1])


# ----------------------------------------------------------------------------- CLI, HF backend
def _build_tiny_llama(out_dir: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # sharper logits than the init's near-uniform ones: samples differ from greedy less often
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(out_dir)
    save_tokenizer(out_dir)
    return out_dir


# Roughly half of the first characters pass: pass@k lands strictly inside (0, 1) for some k.
REWARD_MODULE = '''
def first_char_even(response, answer, prompt):
    return 1.0 if response and ord(response[0]) % 2 == 0 else 0.0
'''


def _argmax_decode(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    ids = tokenizer(prompt)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == EOS_ID:
                break
    return tokenizer.decode(out, skip_special_tokens=True)


def test_cli_hf_backend_writes_consistent_pass_at_k(tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launch.evaluate import main

    model_dir = _build_tiny_llama(tmp_path / "model")
    (tmp_path / "evalreward.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))  # reward workers inherit sys.path
    out = tmp_path / "results.json"
    n, ks, new_tokens = 8, [1, 2, 4, 8], 6
    threads = torch.get_num_threads()
    args = [
        "--model", str(model_dir), "--data", "builtin:arithmetic", "--split", "eval", "--limit", "6",
        "--backend", "hf", "--n", str(n), "--ks", ",".join(map(str, ks)), "--max-new-tokens", str(new_tokens),
        "--reward", "evalreward:first_char_even", "--save-samples", "--threads", "1", "--seed", "3",
    ]
    try:
        rc = main(args + ["--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # --threads is process-wide; later tests keep their setting
    assert rc == 0
    assert "eval/pass@1_greedy" in capsys.readouterr().out
    res = json.loads(out.read_text())
    m = res["metrics"]
    assert res["n"] == n and res["ks"] == ks and len(res["records"]) == 6
    keys = ["eval/pass@1_greedy"] + [f"eval/pass@{k}" for k in ks]
    for key in keys:
        assert 0.0 <= m[key] <= 1.0, key
    curve = [m[f"eval/pass@{k}"] for k in ks]
    assert all(a <= b + 1e-12 for a, b in zip(curve, curve[1:])), curve
    assert 0.0 < curve[0] < 1.0, "the reward should make sampled pass@1 non-trivial"

    # The metrics agree with the per-prompt records they summarise.
    recs = res["records"]
    for r in recs:
        assert len(r["samples"]) == n
        assert r["num_correct"] == sum(s[:1] != "" and ord(s[0]) % 2 == 0 for s in r["samples"])
        assert r["greedy_correct"] == (r["greedy_response"][:1] != "" and ord(r["greedy_response"][0]) % 2 == 0)
    assert m["eval/pass@1"] == pytest.approx(sum(r["num_correct"] for r in recs) / (n * len(recs)))
    assert m["eval/pass@8"] == pytest.approx(sum(r["num_correct"] > 0 for r in recs) / len(recs))
    assert m["eval/pass@1_greedy"] == pytest.approx(sum(r["greedy_correct"] for r in recs) / len(recs))
    assert res["run"]["rollout"]["temperature"] == 1.0  # greedy did not leak into the sampling config

    # Greedy responses are the model's argmax decode; sampled ones are not all identical.
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    for r in recs:
        assert r["greedy_response"] == _argmax_decode(model, tok, r["prompt"], new_tokens), r["prompt"]
    assert any(len(set(r["samples"])) > 1 for r in recs), "sampling after the greedy pass must still sample"

    # The seed fixes the samples: without the greedy pass first, the same seed draws the same ones.
    out2 = tmp_path / "no_greedy.json"
    try:
        assert main(args + ["--no-greedy", "--out", str(out2)]) == 0
    finally:
        torch.set_num_threads(threads)
    res2 = json.loads(out2.read_text())
    assert [r["samples"] for r in res2["records"]] == [r["samples"] for r in recs]
    assert "eval/pass@1_greedy" not in res2["metrics"]


def test_cli_win_rates_against_a_baseline_model(tmp_path, monkeypatch):
    """``--against``: the baseline's weights in the same engine, the same prompts and seed. Against
    itself every sample ties (win rate exactly 1/2); against another model the win rates are those of
    the two models' own sampled rewards (``rlplat.win_rate``)."""
    from launch.evaluate import main
    from rlplat.win_rate import decoded_win_rate

    model_dir, other_dir = _build_tiny_llama(tmp_path / "model"), _build_tiny_llama(tmp_path / "other", seed=1)
    (tmp_path / "gradedreward.py").write_text("def char_code(response, answer, prompt):\n"
                                              "    return float(ord(response[0])) if response else 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    threads = torch.get_num_threads()
    args = ["--data", "builtin:arithmetic", "--split", "eval", "--limit", "4", "--backend", "hf", "--n", "8",
            "--ks", "1,8", "--max-new-tokens", "3", "--reward", "gradedreward:char_code", "--threads", "1",
            "--seed", "5", "--no-greedy", "--win-ns", "1,4"]
    out = {name: tmp_path / f"{name}.json" for name in ("self", "other", "model", "baseline")}
    try:
        assert main(["--model", str(model_dir), "--against", str(model_dir), "--out", str(out["self"]), *args]) == 0
        assert main(["--model", str(model_dir), "--against", str(other_dir), "--out", str(out["other"]), *args]) == 0
        assert main(["--model", str(model_dir), "--save-samples", "--out", str(out["model"]), *args]) == 0
        assert main(["--model", str(other_dir), "--save-samples", "--out", str(out["baseline"]), *args]) == 0
    finally:
        torch.set_num_threads(threads)
    res = {name: json.loads(path.read_text()) for name, path in out.items()}
    for key in ("eval/bon@1_win_rate", "eval/bon@4_win_rate", "eval/won@1_win_rate", "eval/won@4_win_rate"):
        assert res["self"]["metrics"][key] == 0.5
    mine = torch.tensor([r["rewards"] for r in res["model"]["records"]])
    theirs = torch.tensor([r["rewards"] for r in res["baseline"]["records"]])
    assert not torch.equal(mine, theirs)
    for decoder in ("bon", "won"):
        for n in (1, 4):
            want = decoded_win_rate(mine, theirs, n, decoder)[0]
            assert res["other"]["metrics"][f"eval/{decoder}@{n}_win_rate"] == pytest.approx(want, abs=1e-12)
    assert res["other"]["metrics"]["eval/against_reward_mean"] == pytest.approx(res["baseline"]["metrics"]["eval/reward_mean"])
    assert res["other"]["run"]["against"] == str(other_dir) and res["other"]["run"]["win_ns"] == [1, 4]


def test_cli_rejects_k_above_n_before_loading_anything(tmp_path, capsys):
    from launch.evaluate import main

    rc = main(["--model", str(tmp_path / "missing"), "--data", "builtin:arithmetic", "--n", "4", "--ks", "1,8"])
    assert rc == 2
    assert "ks [8] are outside [1, n=4]" in capsys.readouterr().err


def test_cli_group_by_reports_each_family_and_names_a_missing_column(tmp_path, capsys):
    from launch.evaluate import main

    model_dir = _build_tiny_llama(tmp_path / "m")
    out = tmp_path / "eval.json"
    common = ["--model", str(model_dir), "--data", "builtin:arithmetic_bonus", "--limit", "6", "--backend", "hf",
              "--n", "2", "--ks", "1,2", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        assert main(common + ["--group-by", "family", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    m = json.loads(out.read_text())["metrics"]
    assert m["eval/bonus/num_prompts"] + m["eval/plus/num_prompts"] == 6 and m["eval/bonus/num_prompts"] >= 1
    assert {"eval/bonus/pass@2", "eval/plus/pass@1_greedy"} <= set(m)
    assert main(common + ["--group-by", "level"]) == 2
    assert "no column 'level'" in capsys.readouterr().err
