"""Nash-MP through the real loop on a one-token preference game, against the closed form.

The game: after a fixed prompt the policy answers with one of K tokens (its K "actions"); a judge
reads P(a > b) from a K x K preference matrix. The initial policy (also the reference) is a tiny
Llama fitted so that its next-token distribution after the prompt is a chosen ``PI_REF`` on the K
tokens (and about 0 elsewhere). ``configs/nash_mp.yaml`` then runs unchanged except for
``key=value`` overrides, on real Ray, DeepSpeed and vLLM; with enough samples and inner steps each
proximal step solves its sampled objective, so the policy's K-distribution after each outer
iteration must follow the exact Mirror-Prox iterates of ``rlplat.algorithms.nash_tabular``, and
eta must move them as the closed form says.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rlplat.algorithms import nash_tabular

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.runtime

ACTIONS = "abc"
PROMPT = "?"
PI_REF = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
# Cyclic (rock-paper-scissors-like) with a bias towards "c": the equilibrium is mixed, far from pi_ref.
PREF = torch.tensor([[0.5, 0.9, 0.05],
                     [0.1, 0.5, 0.8],
                     [0.95, 0.2, 0.5]], dtype=torch.float64)
BETA = 0.25
ITERATIONS = 3
TV_TOLERANCE = 0.04  # per iterate, policy vs closed form (sampling noise of 8 x 128 samples a step)

JUDGE = '''
PREF = {pref}
ACTIONS = {actions!r}


def judge(prompt, response_a, response_b, answer):
    """P(a > b) from the game's matrix; a response that is not one action loses to every action."""
    i, j = ACTIONS.find(response_a), ACTIONS.find(response_b)
    if len(response_a) != 1 or i < 0:
        return 0.5 if (len(response_b) != 1 or j < 0) else 0.0
    if len(response_b) != 1 or j < 0:
        return 1.0
    return PREF[i][j]
'''


def action_distribution(model_dir: str) -> torch.Tensor:
    """Float64[K]: the model's next-token probabilities of the K actions after the prompt
    (renormalised over the actions: training moves a little mass, a few %, to tokens it never samples)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -1].double(), -1)
    action_ids = [tok.convert_tokens_to_ids(a) for a in ACTIONS]
    p = probs[action_ids]
    assert float(p.sum()) > 0.95, f"the game model leaks {1 - float(p.sum()):.4f} mass outside the actions"
    return p / p.sum()


def build_game_model(out_dir: str, steps: int = 300) -> str:
    """A 2-layer Llama over the built-in character tokenizer whose distribution after PROMPT is PI_REF."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlplat.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, build_tokenizer, save_tokenizer, vocab_size

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=64,
                      tie_word_embeddings=False, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    model = LlamaForCausalLM(cfg)
    tok = build_tokenizer()
    ids = torch.tensor([tok(PROMPT).input_ids])
    target = torch.zeros(vocab_size(), dtype=torch.float32)
    target[[tok.convert_tokens_to_ids(a) for a in ACTIONS]] = PI_REF.float()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        logp = torch.log_softmax(model(ids).logits[0, -1], -1)
        loss = -(target * logp).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out_dir)
    save_tokenizer(out_dir)
    return out_dir


def run_game(tmp_path, name: str, eta: float, inner_steps: int = 30, steps: int = ITERATIONS):
    """``configs/nash_mp.yaml`` on the game; returns (run dir, metrics rows, policy K-distribution per iterate)."""
    work = tmp_path / name
    work.mkdir()
    (work / "game_judge.py").write_text(textwrap.dedent(JUDGE.format(pref=PREF.tolist(), actions=ACTIONS)))
    with open(work / "prompts.jsonl", "w") as f:
        for _ in range(16):
            f.write(json.dumps({"prompt": PROMPT}) + "\n")
    out = work / "run"
    overrides = [
        f"model.path={tmp_path / 'game_model'}", f"data.train_path={work / 'prompts.jsonl'}", "data.answer_key=''",
        "data.prompts_per_step=8", "data.max_prompt_tokens=8", "rollout.max_new_tokens=1",
        "rollout.max_model_len=32", "rollout.cpu_kv_cache_gb=0.05", "algorithm.group_size=128", "algorithm.nash_mp.judge=game_judge:judge",
        f"algorithm.nash_mp.beta={BETA}", f"algorithm.nash_mp.eta={eta}", f"algorithm.nash_mp.inner_steps={inner_steps}",
        # Each proximal step must reach its argmin, which may lie beyond PPO's usual trust region.
        "algorithm.eps_low=0.95", "algorithm.eps_high=20", "trainer.lr=3e-3", "trainer.grad_clip=100",
        "trainer.num_ranks=1", "trainer.micro_batch_tokens=4096", "trainer.eval_every=0",
        f"trainer.max_steps={steps}", "trainer.save_every=1", f"trainer.keep_last={steps}", f"trainer.output_dir={out}",
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(work), ROOT, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "launch.train", "--config", "configs/nash_mp.yaml", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-8000:]}"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    pis = [action_distribution(str(tmp_path / "game_model"))]
    pis += [action_distribution(str(out / "checkpoints" / f"step_{k:06d}" / "hf")) for k in range(steps)]
    return out, rows, pis


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


@pytest.fixture(scope="module")
def game_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("nash-game")
    build_game_model(str(root / "game_model"))
    return root


def test_game_model_is_the_stated_reference(game_model):
    assert tv(action_distribution(str(game_model / "game_model")), PI_REF) < 0.01


def test_nash_mp_follows_the_closed_form_and_eta_acts(game_model):
    """Two runs of configs/nash_mp.yaml that differ only in eta: each follows its own closed-form
    iterates (TV <= TV_TOLERANCE per iterate), the closed forms of the two etas differ by more
    than that, and the runs' logged updates differ."""
    runs = {}
    for eta in (0.1, 2.0):
        _, rows, pis = run_game(game_model, f"eta{eta}", eta)
        pi_0 = pis[0]
        exact = nash_tabular.mirror_prox(pi_0, PREF, BETA, eta, ITERATIONS)
        gaps = [tv(p, e) for p, e in zip(pis, exact)]
        print(f"eta={eta}: policy {[p.tolist() for p in pis]}\n  closed form {[e.tolist() for e in exact]}\n  TV {gaps}")
        assert max(gaps) <= TV_TOLERANCE, (eta, gaps)
        runs[eta] = (rows, pis, exact)
    (rows_a, pis_a, exact_a), (rows_b, pis_b, exact_b) = runs[0.1], runs[2.0]
    assert tv(exact_a[-1], exact_b[-1]) > 2 * TV_TOLERANCE  # eta moves the exact iterates ...
    assert tv(pis_a[-1], pis_b[-1]) > TV_TOLERANCE  # ... and the real ones, the same way
    assert [r["nash/half_full_param_l2"] for r in rows_a] != [r["nash/half_full_param_l2"] for r in rows_b]
