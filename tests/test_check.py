"""``python -m launch.train --check`` runs every check a real run makes before Ray starts (config,
tokenizers, train and eval data, options a joined cluster ignores), in seconds, without starting
Ray or creating the run directory. One test per mistake it must catch (issue 17, item 2)."""
import ast
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from launch.train import CHECK_OK, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
# Configs that name data and models of a real cluster or the hub (no network here): their --check
# fails here on the first of them. test_gsm8k_config_passes_check_on_local_copies covers the second.
NEEDS_OUTSIDE_FILES = {"cluster_7b_grpo": "/shared/data/gsm8k/train.parquet and Qwen/Qwen2.5-7B",
                       "gsm8k_qwen05b": "the hub (Qwen/Qwen2.5-0.5B-Instruct, openai/gsm8k)"}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Relative trainer.output_dir under tmp_path; an empty model cache, so built-in models are
    not built (``--check`` must not build them); no cluster to join unless a test sets one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RLPLAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def run_check(capsys, *overrides, config="grpo", check=True):
    """launch.train.main in this process: (exit code, stdout + stderr). Asserts what every --check
    promises: no Ray imported, no run directory, no model built (what would take minutes; its time
    is not asserted: a timed test fails on a loaded machine and says nothing about the cause)."""
    ray_before = "ray" in sys.modules
    rc = main(["--config", str(ROOT / "configs" / f"{config}.yaml"), *(["--check"] if check else []), *overrides])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "rlplat: building builtin:" not in text, "--check started a model build"
    assert ray_before or "ray" not in sys.modules, "--check imported ray"
    assert not Path("runs").exists() and not list(Path.cwd().glob("out*")), "--check created a run directory"
    assert not (Path(os.environ["RLPLAT_CACHE"]) / "models").exists(), "--check built a model"
    return rc, text


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random 1-layer Llama with the built-in tokenizer, saved in a second (loaders' tests need weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlplat.models.tokenizer import save_tokenizer, vocab_size

    d = tmp_path_factory.mktemp("model")
    cfg = LlamaConfig(vocab_size=vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(str(d))
    save_tokenizer(d)
    return str(d)


# ------------------------------------------------------------------ the shipped configs pass
@pytest.mark.parametrize("config", CONFIGS)
def test_shipped_configs_pass_check(capsys, config):
    if config in NEEDS_OUTSIDE_FILES:
        pytest.skip(f"needs {NEEDS_OUTSIDE_FILES[config]}")
    rc, out = run_check(capsys, config=config)
    assert rc == 0, out
    assert out.rstrip().splitlines()[-1] == CHECK_OK
    assert "not built yet: checked with the built-in tokenizer" in out  # said, not silently skipped


def test_gsm8k_config_passes_check_on_local_copies(capsys, tmp_path, model_dir):
    """configs/gsm8k_qwen05b.yaml as a user without the hub runs it: a local model and a saved
    DatasetDict with GSM8K's columns and splits; nothing else changed."""
    import datasets

    rows = [{"question": f"Tom has {i} apples and buys 2. How many now?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}
            for i in range(40)]
    datasets.DatasetDict(train=datasets.Dataset.from_list(rows[:32]),
                         test=datasets.Dataset.from_list(rows[32:])).save_to_disk(str(tmp_path / "gsm8k"))
    capsys.readouterr()  # the save's progress bars
    rc, out = run_check(capsys, f"model.path={model_dir}", f"data.train_path={tmp_path / 'gsm8k'}",
                        "data.config_name=null", config="gsm8k_qwen05b")
    assert rc == 0, out
    assert out.rstrip().splitlines()[-1] == CHECK_OK


def test_check_cli_in_a_fresh_process_starts_no_ray_and_writes_nothing(tmp_path):
    code = ("import sys; from launch.train import main; rc = main(sys.argv[1:]); "
            "print('ray imported:', 'ray' in sys.modules); sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", code, "--config", str(ROOT / "configs" / "grpo.yaml"), "--check",
                           f"trainer.output_dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "rlplat: building builtin:" not in proc.stdout  # nothing that takes minutes
    assert proc.stdout.rstrip().splitlines()[-2:] == [CHECK_OK, "ray imported: False"]
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ 1. a tokenizer that cannot load
@pytest.mark.parametrize("key", ["model.path", "model.tokenizer"])
def test_unloadable_tokenizer_names_its_key(capsys, tmp_path, model_dir, key):
    import shutil

    bad = tmp_path / "bad_tokenizer"
    shutil.copytree(model_dir, bad)
    (bad / "tokenizer.json").write_text("{not json")
    rc, out = run_check(capsys, f"{key}={bad}")
    assert rc == 2, out
    assert f"{key}='{bad}': cannot load a tokenizer" in out


# ------------------------------------------------------------------ 2. a row without the prompt key
def test_jsonl_row_missing_the_prompt_key_names_file_line_and_key(capsys, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "1+2=", "answer": "3"}, {"prompt": "2+2=", "answer": "4"},
                                                  {"question": "3+4=", "answer": "7"}])
    rc, out = run_check(capsys, f"data.train_path={data}", "data.eval_path=builtin:arithmetic")
    assert rc == 2, out
    assert f"{data}: row 2 (line 3): missing prompt key 'prompt' (data.prompt_key)" in out


# ------------------------------------------------------------------ 3. an over-long prompt, train or eval
@pytest.mark.parametrize("split", ["train", "eval"])
def test_over_long_prompt_names_file_row_and_limit(capsys, tmp_path, split):
    rows = [{"prompt": "1+2=", "answer": "3"}, {"prompt": "1+" * 20 + "1=", "answer": "21"}]  # 43 tokens > 32
    data = write_jsonl(tmp_path / f"{split}.jsonl", rows)
    other = write_jsonl(tmp_path / "ok.jsonl", rows[:1])
    train, held_out = (data, other) if split == "train" else (other, data)
    rc, out = run_check(capsys, f"data.train_path={train}", f"data.eval_path={held_out}", "data.prompts_per_step=1")
    assert rc == 2, out
    assert f"{split} data, data.{split}_path='{data}'" in out
    assert "row 1 (43 tokens)" in out and "data.max_prompt_tokens=32" in out


# ------------------------------------------------------------------ 4. evaluation with nothing to evaluate on
def test_file_train_path_with_eval_every_and_no_eval_path_is_refused(capsys, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "1+2=", "answer": "3"}])
    rc, out = run_check(capsys, f"data.train_path={data}", "trainer.eval_every=10", "data.prompts_per_step=1")
    assert rc == 2, out
    for name in ("trainer.eval_every=10", "data.eval_path is not set", f"data.train_path='{data}'"):
        assert name in out
    rc, out = run_check(capsys, f"data.train_path={data}", "trainer.eval_every=0", "data.prompts_per_step=1")
    assert rc == 0, out


# ------------------------------------------------------------------ 5. model.trust_remote_code reaches every loader
def _remote_code_tokenizer(model_dir, out: Path) -> Path:
    """``model_dir`` whose tokenizer class lives in the repository's own code (auto_map)."""
    import shutil

    shutil.copytree(model_dir, out)
    (out / "my_tokenizer.py").write_text(
        "from transformers import PreTrainedTokenizerFast\n\n\nclass MyTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.update(auto_map={"AutoTokenizer": [None, "my_tokenizer.MyTokenizer"]}, tokenizer_class="MyTokenizer")
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def test_check_loads_a_remote_code_tokenizer_only_with_trust_remote_code(tmp_path, model_dir):
    model = _remote_code_tokenizer(model_dir, tmp_path / "remote")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "RLPLAT_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env.pop("RAY_ADDRESS", None)

    def check(*overrides):
        return subprocess.run([sys.executable, "-m", "launch.train", "--config", str(ROOT / "configs" / "grpo.yaml"),
                               "--check", f"model.path={model}", f"trainer.output_dir={tmp_path / 'run'}", *overrides],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    refused = check()
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert f"model.path='{model}': cannot load a tokenizer" in refused.stderr
    assert "model.trust_remote_code=true" in refused.stderr
    trusted = check("model.trust_remote_code=true")
    assert trusted.returncode == 0, trusted.stdout[-2000:] + trusted.stderr[-2000:]
    assert trusted.stdout.rstrip().splitlines()[-1] == CHECK_OK
    assert not (tmp_path / "run").exists()


class _Spy:
    """Wraps a ``from_pretrained`` (or vLLM's ``LLM``) and records the keyword arguments of each call."""

    def __init__(self, fn=None):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.fn(*args, **kwargs) if self.fn else types.SimpleNamespace(**kwargs)


def _spy_from_pretrained(monkeypatch, *classes):
    spies = []
    for cls in classes:
        spy = _Spy(cls.from_pretrained)
        monkeypatch.setattr(cls, "from_pretrained", spy)
        spies.append(spy)
    return spies


def test_every_loader_passes_trust_remote_code(monkeypatch, model_dir):
    """Each loader, built with trust_remote_code=True, hands it to every transformers / vLLM call
    it makes: the preflight's tokenizer, the HF and vLLM engines, the scorer's and trainer's model
    loader, the preference worker. vLLM itself is replaced by a recorder (no engine starts)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from actors.preference import PreferenceWorker
    from actors.rollout import HFRolloutEngine, VLLMRolloutEngine
    from launch.preflight import load_tokenizer
    from rlplat.config import RolloutConfig
    from rlplat.modeling import load_causal_lm

    tok, lm, cls = _spy_from_pretrained(monkeypatch, AutoTokenizer, AutoModelForCausalLM,
                                        AutoModelForSequenceClassification)
    load_tokenizer(model_dir, "model.path", trust_remote_code=True)
    load_causal_lm(model_dir, "float32", trust_remote_code=True)  # scorers and trainer ranks load through it
    HFRolloutEngine(model_dir, model_dir, RolloutConfig(backend="hf"), "float32", 0, trust_remote_code=True)
    PreferenceWorker(None, model_dir, "float32", 64, trust_remote_code=True)
    llm = _Spy()
    fake_vllm = types.SimpleNamespace(__version__="fake", LLM=llm, SamplingParams=object)
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    # object_store: no weight-transfer config to import; enforce_eager off: the CPU branch would
    # turn torch's dynamo off in this test process.
    VLLMRolloutEngine(model_dir, model_dir, RolloutConfig(weight_sync="object_store", enforce_eager=False),
                      "float32", 0, trust_remote_code=True)
    assert len(tok.calls) == 3 and len(lm.calls) == 2 and len(cls.calls) == 1 and len(llm.calls) == 1
    for call in tok.calls + lm.calls + cls.calls + llm.calls:
        assert call.get("trust_remote_code") is True, call


def test_every_from_pretrained_call_names_trust_remote_code():
    """Static half of the test above, for loaders it cannot build cheaply (DeepSpeed ranks) and for
    loaders added later: every ``.from_pretrained(...)`` call in the runtime passes the flag."""
    missing = []
    for package in ("actors", "launch", "rlplat"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "from_pretrained"
                        and not any(k.arg == "trust_remote_code" for k in node.keywords)):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not missing, f"from_pretrained without trust_remote_code: {missing}"


# ------------------------------------------------------------------ 6. ray options a joined cluster ignores
EMBEDDED_ONLY = ["ray.host=0.0.0.0", "ray.num_cpus=4", "ray.include_dashboard=false"]  # each away from its default


def test_embedded_only_ray_options_are_reported_under_ray_address(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_ADDRESS", "http://10.1.2.3:8265")
    rc, out = run_check(capsys, *EMBEDDED_ONLY)
    assert rc == 0, out
    for item in EMBEDDED_ONLY:
        key = item.split("=")[0]
        line = next((ln for ln in out.splitlines() if ln.startswith(f"rlplat: warning: {key}=")), None)
        assert line and "is ignored: the job joins the existing Ray cluster at http://10.1.2.3:8265 (RAY_ADDRESS)" in line, out
    # Defaults say nothing; nor do the options where they act (an embedded cluster).
    rc, out = run_check(capsys)
    assert rc == 0 and "rlplat: warning" not in out
    monkeypatch.delenv("RAY_ADDRESS")
    rc, out = run_check(capsys, *EMBEDDED_ONLY)
    assert rc == 0 and "rlplat: warning" not in out
    # A real run reports them at its start too (here it then stops on bad data, before Ray).
    monkeypatch.setenv("RAY_ADDRESS", "http://10.1.2.3:8265")
    data = write_jsonl(tmp_path / "train.jsonl", [{"question": "1+2="}])
    rc, out = run_check(capsys, *EMBEDDED_ONLY, f"data.train_path={data}", "trainer.eval_every=0", check=False)
    assert rc == 2 and out.count("rlplat: warning: ray.") == 3, out
