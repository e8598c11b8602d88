"""Prompt loading (every source format, dotted keys, error messages), rendering, the sampler."""
from __future__ import annotations

import json
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlplat.config.schema import DataConfig
from rlplat.data import PromptRow, PromptSampler, load_prompts, render_prompt, render_prompts

ROWS = [
    {"question": {"text": "1+1="}, "meta": {"gold": "2"}, "id": 7},
    {"question": {"text": "2+3="}, "meta": {"gold": "5"}, "id": 8},
    {"question": {"text": "4+4="}, "meta": {"gold": 8}, "id": 9},
]
NESTED = DataConfig(prompt_key="question.text", answer_key="meta.gold")


def write_jsonl(path, rows, blank_line_after=None):
    with open(path, "w") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps(row) + "\n")
            if i == blank_line_after:
                f.write("\n")


def check_nested(rows):
    assert [r.prompt for r in rows] == ["1+1=", "2+3=", "4+4="]
    assert [r.answer for r in rows] == ["2", "5", "8"]  # a numeric answer becomes text
    assert [r.index for r in rows] == [0, 1, 2]
    assert rows[0].extra["id"] == 7


def test_jsonl_with_dotted_keys(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, ROWS, blank_line_after=0)
    check_nested(load_prompts(replace(NESTED, train_path=str(path))))


def test_parquet_with_dotted_keys(tmp_path):
    path = tmp_path / "train.parquet"
    rows = [dict(r, meta={"gold": str(r["meta"]["gold"])}) for r in ROWS]  # parquet columns have one type
    pq.write_table(pa.Table.from_pylist(rows), path)
    check_nested(load_prompts(replace(NESTED, train_path=str(path))))


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    import datasets

    rows = [dict(r, meta={"gold": str(r["meta"]["gold"])}) for r in ROWS]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    check_nested(load_prompts(replace(NESTED, train_path=str(tmp_path / "ds"))))

    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list(rows), test=datasets.Dataset.from_list(rows[:1])
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    cfg = replace(NESTED, train_path=str(tmp_path / "dd"), eval_path=str(tmp_path / "dd"))
    assert len(load_prompts(cfg, "train")) == 3
    assert [r.prompt for r in load_prompts(cfg, "eval")] == ["1+1="]


def test_explicit_format_overrides_suffix(tmp_path):
    path = tmp_path / "train.txt"
    write_jsonl(path, ROWS)
    with pytest.raises(ValueError, match="data.format"):
        load_prompts(replace(NESTED, train_path=str(path)))
    check_nested(load_prompts(replace(NESTED, train_path=str(path), format="jsonl")))


def test_builtin_arithmetic_train_and_heldout():
    cfg = DataConfig(builtin_train_size=50, builtin_eval_size=20)
    train, heldout = load_prompts(cfg, "train"), load_prompts(cfg, "eval")
    assert len(train) == 50 and len(heldout) == 20
    assert {r.prompt for r in train}.isdisjoint(r.prompt for r in heldout)
    assert all(r.prompt.endswith("=") and r.answer.isdigit() for r in train)
    assert [r.prompt for r in load_prompts(cfg, "train")] == [r.prompt for r in train]  # deterministic


def test_missing_key_names_file_row_key_and_row_keys(tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = [ROWS[0], ROWS[1], {"question": {"text": "9+9="}, "other": 1}]
    write_jsonl(path, rows, blank_line_after=0)  # the blank line makes row 2 sit on line 4
    with pytest.raises(ValueError) as err:
        load_prompts(replace(NESTED, train_path=str(path)))
    msg = str(err.value)
    assert str(path) in msg and "row 2" in msg and "line 4" in msg
    assert "'meta.gold'" in msg and "['other', 'question']" in msg


def test_wrong_prompt_type_names_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [{"prompt": "a", "answer": "1"}, {"prompt": 5, "answer": "1"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl: row 1 .*prompt 'prompt' must be a string.*got int"):
        load_prompts(DataConfig(train_path=str(path)))


def test_invalid_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", \n')
    with pytest.raises(ValueError, match=r"broken\.jsonl: line 2 is not valid JSON"):
        load_prompts(DataConfig(train_path=str(path)))


def test_missing_file_names_path_and_config_key(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match=r"data\.train_path: '.*nope\.jsonl' does not exist"):
        load_prompts(DataConfig(train_path=missing))
    with pytest.raises(ValueError, match=r"data\.eval_path: '.*nope\.jsonl' does not exist"):
        load_prompts(DataConfig(eval_path=missing), "eval")


def test_eval_without_eval_path_and_file_train_source_is_an_error(tmp_path):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [{"prompt": "a", "answer": "1"}])
    with pytest.raises(ValueError, match="data.eval_path is not set"):
        load_prompts(DataConfig(train_path=str(path)), "eval")


def test_no_answers_when_answer_key_empty(tmp_path):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [{"prompt": "a"}])
    assert load_prompts(DataConfig(train_path=str(path), answer_key=""))[0].answer is None


@pytest.fixture(scope="module")
def tokenizer():
    from rlplat.models.tokenizer import build_tokenizer

    return build_tokenizer()


def test_render_plain_and_chat_template(tokenizer):
    row = PromptRow(prompt="12+3=", answer="15", index=0)
    plain = render_prompt(row, tokenizer, DataConfig())
    assert tokenizer.decode(plain) == "<bos>12+3="
    chat = render_prompt(row, tokenizer, DataConfig(chat_template=True, system_prompt="Be exact."))
    assert tokenizer.decode(chat) == "<bos>system: Be exact.\nuser: 12+3=\nassistant:"
    assert chat.count(tokenizer.bos_token_id) == 1  # the template's <bos> only, none added on top


def test_chat_message_list_prompt(tmp_path, tokenizer):
    path = tmp_path / "chat.jsonl"
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "1+2="}]
    write_jsonl(path, [{"prompt": msgs, "reward_model": {"ground_truth": "3"}}])
    with pytest.raises(ValueError, match="data.chat_template=true"):
        load_prompts(DataConfig(train_path=str(path), answer_key="reward_model.ground_truth"))
    cfg = DataConfig(train_path=str(path), answer_key="reward_model.ground_truth", chat_template=True)
    row = load_prompts(cfg)[0]
    assert (row.prompt, row.answer) == ("1+2=", "3")
    assert tokenizer.decode(render_prompt(row, tokenizer, cfg)) == "<bos>system: S\nuser: 1+2=\nassistant:"
    with pytest.raises(ValueError, match="already has a system message"):
        render_prompt(row, tokenizer, replace(cfg, system_prompt="other"))


def test_overlong_prompts_raise_naming_rows(tokenizer):
    cfg = DataConfig(max_prompt_tokens=5)
    rows = [PromptRow("1+1=", "2", 0), PromptRow("123+456=", "579", 1), PromptRow("99+99=", "198", 2)]
    with pytest.raises(ValueError, match=r"prompt row 1 is 9 tokens, over data.max_prompt_tokens=5"):
        render_prompt(rows[1], tokenizer, cfg)
    with pytest.raises(ValueError, match=r"2 of 3 prompts .* \(longest 9\): row 1 \(9 tokens\), row 2 \(7 tokens\)"):
        render_prompts(rows, tokenizer, cfg)
    assert len(render_prompts(rows[:1], tokenizer, cfg)[0]) == 5


def _rows(n):
    return [PromptRow(prompt=str(i), answer=None, index=i) for i in range(n)]


def test_sampler_epochs_are_permutations_and_deterministic():
    rows = _rows(10)
    a, b = PromptSampler(rows, 4, seed=3), PromptSampler(rows, 4, seed=3)
    stream_a = [r.index for _ in range(5) for r in a.next_batch()]  # 20 = two epochs exactly
    assert stream_a == [r.index for _ in range(5) for r in b.next_batch()]
    assert sorted(stream_a[:10]) == list(range(10)) and sorted(stream_a[10:]) == list(range(10))
    assert stream_a[:10] != stream_a[10:]  # a fresh order each epoch
    assert stream_a != [r.index for _ in range(5) for r in PromptSampler(rows, 4, seed=4).next_batch()]
    unshuffled = PromptSampler(rows, 4, shuffle=False)
    assert [r.index for r in unshuffled.next_batch()] == [0, 1, 2, 3]


def test_sampler_resume_continues_exactly():
    rows = _rows(7)
    full = PromptSampler(rows, 3, seed=1)
    reference = [[r.index for r in full.next_batch()] for _ in range(6)]
    first = PromptSampler(rows, 3, seed=1)
    for _ in range(3):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as plain data
    resumed = PromptSampler(rows, 3, seed=1)
    resumed.load_state_dict(state)
    assert [[r.index for r in resumed.next_batch()] for _ in range(3)] == reference[3:]
    with pytest.raises(ValueError, match="num_rows=7, this run has 8"):
        PromptSampler(_rows(8), 3, seed=1).load_state_dict(state)


def test_sampler_rejects_batch_larger_than_data():
    with pytest.raises(ValueError, match="prompts_per_step=5"):
        PromptSampler(_rows(4), 5)
