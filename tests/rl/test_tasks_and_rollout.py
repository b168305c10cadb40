import json

import pytest
import torch
from transformers import AutoTokenizer

from signopt.rl.rollout import completion_masks
from signopt.rl.tasks import AdditionTask, SortingTask, make_task, match_answer, parse_int, read_jsonl
from signopt.rl.tokenizer import char_tokenizer


@pytest.mark.parametrize("text,value", [("46", 46), (" 46", 46), ("= 46.", 46), ("1,234", 1234), ("-7x", -7),
                                        ("abc", None), ("", None)])
def test_parse_int(text, value):
    assert parse_int(text) == value


def test_addition_task_split_and_reward():
    task = AdditionTask(digits=2, eval_size=50)
    held = {e.prompt for e in task.eval_examples()}
    train = task.sample(2000, torch.Generator().manual_seed(0))
    assert len(held) == 50 and not held & {e.prompt for e in train}
    e = train[0]
    a, b = map(int, e.prompt[:-1].split("+"))
    assert task.reward(f" {a + b}", e.answer) == 1.0 and task.reward(str(a + b + 1), e.answer) == 0.0
    assert task.reward("no digits", e.answer) == 0.0


def test_sorting_task():
    task = SortingTask(length=4, eval_size=30)
    e = task.sample(1, torch.Generator().manual_seed(1))[0]
    assert e.prompt.startswith("sort ") and task.reward(e.answer + " ", e.answer) == 1.0
    assert task.reward("1, 2", "1 2 3") == 0.0 and task.reward("1,2,3", "1 2 3") == 1.0
    assert not {x.prompt for x in task.eval_examples()} & {x.prompt for x in task.sample(500, torch.Generator())}


def test_jsonl_task(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "answer": i}) for i in range(10)) + "\n\n")
    task = make_task("jsonl", data=str(path))
    assert len(task.eval_examples()) == 1 and task.reward("= 9", "9") == 1.0
    assert match_answer("Paris\nmore", "paris") == 1.0 and match_answer("Lyon", "Paris") == 0.0


@pytest.mark.parametrize("line,msg", [("{bad", "not valid JSON"), ('{"prompt": "x"}', "keys 'prompt' and 'answer'"),
                                      ('{"prompt": "", "answer": 1}', "'prompt' must"),
                                      ('{"prompt": "x", "answer": [1]}', "'answer' must"), ("[1, 2]", "expected an object")])
def test_malformed_jsonl_row_names_its_line(tmp_path, line, msg):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"d\.jsonl:3: .*{msg}"):
        read_jsonl(path)


def test_task_errors():
    with pytest.raises(ValueError, match="task='math'.*allowed values: addition, sorting, jsonl"):
        make_task("math")
    with pytest.raises(ValueError, match="needs data"):
        make_task("jsonl")


def test_completion_masks_eos_and_truncation():
    comp = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8], [1, 0, 0, 0]])
    mask, truncated = completion_masks(comp, eos_id=1)
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert truncated.tolist() == [False, True, False]


def test_char_tokenizer_roundtrip(tmp_path):
    tok = char_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    ids = loaded("12+34=")["input_ids"]
    assert len(ids) == 6 and loaded.decode(ids) == "12+34=" and loaded.padding_side == "left"
    batch = loaded(["1+1=", "12+34="], padding=True)["input_ids"]
    assert batch[0][:2] == [loaded.pad_token_id] * 2


def test_sampling_is_not_truncated_to_top_k():
    """Rollouts sample from the full tempered policy (the distribution the loss's log-probs use):
    transformers' default top_k=50 must not apply. An untrained model is near-uniform over its
    ~97 tokens, so many first-token samples of one prompt reach well over 50 distinct tokens."""
    from signopt.rl.modeling import tiny_model
    from signopt.rl.rollout import generate

    tok = char_tokenizer()
    model = tiny_model(tok, seed=0)
    torch.manual_seed(0)
    ro = generate(model, tok, ["1+1="], num_return=1024, max_new_tokens=1, do_sample=True)
    assert len(set(ro.completion_ids[:, 0].tolist())) > 60
