"""The character tokenizer and the locally built tiny Llama models (built with no or a few
warm-start steps so the file stays fast)."""
import json
import math
import os
import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from rlplat.models import tiny
from rlplat.models.tiny import (
    BUILD_INFO_FILE,
    SIZES,
    TinySpec,
    build_tiny_model,
    ensure_tiny_model,
    resolve_model_path,
    warm_start,
)
from rlplat.models.tokenizer import (
    BOS_ID,
    CHARACTERS,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    build_tokenizer,
    save_tokenizer,
)
from rlplat.tasks.arithmetic import sum_without_carries

SAMPLES = ["12+35= 47", "a  b\n\tc , . !", " leading and trailing ", "x ,y .", "(3*4)-5=7?", CHARACTERS]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("policy")
    build_tiny_model(out, size="policy", seed=0, warm_start_steps=0)
    return out


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    build_tiny_model(out, size="teacher", seed=0, warm_start_steps=0)
    return out


# ------------------------------------------------------------------ tokenizer
@pytest.mark.parametrize("text", SAMPLES)
def test_tokenizer_round_trip_one_token_per_char(text):
    tok = build_tokenizer()
    ids = tok.encode(text)
    assert ids[0] == BOS_ID and EOS_ID not in ids
    assert len(ids) == len(text) + 1
    assert UNK_ID not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids) == "<bos>" + text


def test_tokenizer_unknown_char_and_special_ids():
    tok = build_tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (PAD_ID, BOS_ID, EOS_ID, UNK_ID)
    assert tok.encode("é", add_special_tokens=False) == [UNK_ID]


def test_tokenizer_reloads_with_autotokenizer(tmp_path):
    save_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert isinstance(tok, PreTrainedTokenizerFast)
    ref = build_tokenizer()
    for text in SAMPLES:
        assert tok.encode(text) == ref.encode(text)
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    chat = tok.apply_chat_template([{"role": "user", "content": "1+1="}], tokenize=False, add_generation_prompt=True)
    assert chat == "<bos>user: 1+1=\nassistant:"
    batch = tok(["1+1=", "12+3="], padding=True, padding_side="left")
    assert batch["input_ids"][0][0] == PAD_ID and batch["attention_mask"][0][0] == 0


# --------------------------------------------------------------------- models
def test_policy_dir_loads_and_ids_match(policy_dir):
    config = AutoConfig.from_pretrained(str(policy_dir))
    tok = AutoTokenizer.from_pretrained(str(policy_dir))
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert config.vocab_size == len(tok)
    assert config.head_dim >= 32 and config.hidden_size == config.num_attention_heads * config.head_dim
    assert config.tie_word_embeddings is False
    model = AutoModelForCausalLM.from_pretrained(str(policy_dir))
    assert next(model.parameters()).dtype == torch.float32
    assert (policy_dir / "model.safetensors").is_file()
    gen = json.loads((policy_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == EOS_ID and gen["pad_token_id"] == PAD_ID
    n = sum(p.numel() for p in model.parameters())
    assert n == json.loads((policy_dir / BUILD_INFO_FILE).read_text())["num_parameters"]
    enc = tok(["12+3="], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert torch.equal(out[:, :6], enc["input_ids"]) and 6 < out.shape[1] <= 6 + 3


def test_built_policy_is_about_5m_parameters_and_careless_the_teacher_right(tiny_models):
    """The default builds: a ~5M-parameter policy whose errors are mostly dropped carries (room for
    RL to fix), and a teacher at least as large that adds correctly."""
    pol = json.loads((Path(tiny_models["policy"]) / BUILD_INFO_FILE).read_text())
    tea = json.loads((Path(tiny_models["teacher"]) / BUILD_INFO_FILE).read_text())
    assert 4e6 < pol["num_parameters"] < 20e6 and tea["num_parameters"] >= pol["num_parameters"]
    assert 0.5 < pol["heldout_accuracy"] < 0.85
    assert pol["heldout_carry_free_rate"] > 0.5 * (1 - pol["heldout_accuracy"])
    assert tea["heldout_accuracy"] >= 0.9 and tea["heldout_carry_free_rate"] < 0.05


def test_careless_phase_is_the_last_steps_and_drops_carries(monkeypatch):
    seen = []
    real_collate = tiny._collate
    monkeypatch.setattr(tiny, "_collate", lambda tok, rows: seen.append(rows) or real_collate(tok, rows))
    spec = TinySpec(hidden_size=64, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                    warm_start_steps=3, lr=1e-3, batch_size=32, careless_steps=1, careless_rate=1.0)
    torch.manual_seed(0)
    model = tiny.LlamaForCausalLM(tiny.LlamaConfig(
        vocab_size=tiny.vocab_size(), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32))
    warm_start(model, build_tokenizer(), spec, steps=3, seed=0)
    assert len(seen) == 3

    def operands(row):
        return [int(x) for x in row["prompt"].rstrip("=").split("+")]

    assert all(r["answer"] == str(sum(operands(r))) for rows in seen[:2] for r in rows)
    assert all(r["answer"] == str(sum_without_carries(*operands(r))) for r in seen[2])  # rate 1.0: every one
    assert any(sum_without_carries(*operands(r)) != sum(operands(r)) for r in seen[2])  # some of the 32 carry


def test_careless_rate_is_a_probability():
    rows = [{"prompt": "38+45=", "answer": "83"}] * 2000
    out = tiny._careless(rows, 0.5, tiny.random.Random(0))
    share = sum(r["answer"] == "73" for r in out) / len(out)
    assert 0.45 < share < 0.55 and {r["answer"] for r in out} == {"73", "83"}
    assert rows[0]["answer"] == "83"  # the input rows are not modified


def test_teacher_shares_tokenizer(policy_dir, teacher_dir):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (policy_dir / name).read_text() == (teacher_dir / name).read_text()
    assert AutoConfig.from_pretrained(str(teacher_dir)).vocab_size == AutoConfig.from_pretrained(str(policy_dir)).vocab_size
    assert AutoConfig.from_pretrained(str(teacher_dir)).head_dim >= 32


def test_build_is_deterministic_for_a_seed(tmp_path):
    def weights(seed, name):
        build_tiny_model(tmp_path / name, size="policy", seed=seed, warm_start_steps=2)
        return AutoModelForCausalLM.from_pretrained(str(tmp_path / name)).state_dict()

    a, b, c = weights(1, "a"), weights(1, "b"), weights(2, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_warm_start_lowers_the_loss():
    spec = SIZES.get("policy")
    torch.manual_seed(0)
    model = tiny.LlamaForCausalLM(tiny.tiny_config("policy"))
    loss = warm_start(model, build_tokenizer(), spec, steps=40, seed=0)
    assert math.isfinite(loss) and loss < 0.6 * math.log(model.config.vocab_size)


def test_unknown_size_is_named():
    with pytest.raises(KeyError, match="'huge'"):
        build_tiny_model("/nonexistent-never-created", size="huge")


# ---------------------------------------------------------------------- cache
def test_ensure_tiny_model_builds_once_even_concurrently(tmp_path, monkeypatch):
    calls = []
    real_build = tiny.build_tiny_model

    def counting_build(out_dir, **kwargs):
        calls.append(out_dir)
        return real_build(out_dir, **kwargs)

    monkeypatch.setattr(tiny, "build_tiny_model", counting_build)
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(ensure_tiny_model(
        "policy", cache_dir=tmp_path, warm_start_steps=0))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(paths)) == 1
    path = paths[0]
    assert os.path.basename(path) == f"policy-{tiny.CACHE_VERSION}-seed0-steps0"
    assert str(calls[0]) != path  # built elsewhere, then renamed into place
    assert os.stat(path).st_mode & 0o777 == 0o755
    mtime = os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns
    assert ensure_tiny_model("policy", cache_dir=tmp_path, warm_start_steps=0) == path
    assert len(calls) == 1
    assert os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns == mtime
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_ensure_tiny_model_refuses_foreign_directory(tmp_path):
    (tmp_path / f"policy-{tiny.CACHE_VERSION}-seed0-steps0").mkdir()
    with pytest.raises(RuntimeError, match="not a complete rlplat build"):
        ensure_tiny_model("policy", cache_dir=tmp_path, warm_start_steps=0)


def test_default_cache_root_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RLPLAT_CACHE", str(tmp_path))
    assert tiny.default_cache_root() == tmp_path / "models"


def test_resolve_model_path(monkeypatch):
    seen = []
    monkeypatch.setattr(tiny, "ensure_tiny_model", lambda size: seen.append(size) or f"/cache/{size}")
    assert resolve_model_path("builtin:tiny-policy") == "/cache/policy"
    assert resolve_model_path("builtin:tiny-teacher") == "/cache/teacher"
    assert seen == ["policy", "teacher"]
    assert resolve_model_path("/some/local/dir") == "/some/local/dir"
    assert resolve_model_path("org/model-name") == "org/model-name"
    with pytest.raises(ValueError, match="builtin:tiny-policy"):
        resolve_model_path("builtin:tiny-huge")
    with pytest.raises(ValueError, match="unknown built-in model 'builtin:gpt'"):
        resolve_model_path("builtin:gpt")


def test_carry_free_rate_counts_only_wrong_answers_that_dropped_the_carry():
    rows = [{"prompt": "38+45=", "answer": "83"}, {"prompt": "12+35=", "answer": "47"}, {"prompt": "9+9=", "answer": "18"}]
    # 73: the dropped carry; 47 is right (and carry-free, since nothing carries); 17: some other error
    assert tiny.carry_free_rate([" 73", "47", "17"], rows) == pytest.approx(1 / 3)
    assert tiny.carry_free_rate(["83", "47", " 8<eos>"], rows) == pytest.approx(1 / 3)


def test_a_build_reports_progress_with_the_time_left(capsys, monkeypatch):
    """The first run's model build is its one long stretch: it says what it builds and how far it is."""
    from rlplat.models import tiny

    clock = iter(float(t) for t in range(0, 1000, 40))  # 40 s between calls: every tick is due
    monkeypatch.setattr(tiny.time, "perf_counter", lambda: next(clock))
    progress = tiny._Progress("builtin:tiny-policy", total=4)
    for done in range(1, 5):
        progress.tick(done)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"rlplat: building builtin:tiny-policy: warm-start step {d}/4 ({25 * d}%), about {left:.1f} min left"
                     for d, left in ((1, 40 * 3 / 60), (2, 40 * 2 / 60), (3, 40 / 60))]
    quiet = tiny._Progress("builtin:tiny-policy", total=4, every_s=1e9)
    quiet.tick(1)
    assert capsys.readouterr().out == ""
