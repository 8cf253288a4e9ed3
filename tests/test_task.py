import random

import pytest

from salsa.task import (Problem, TaskSpec, gold_reward, lcs_length, parse_prompt, preference_pair,
                        teacher_response)


@pytest.mark.parametrize("prompt,response,expected", [
    ("sort 5 2 8 1", "1 2 5 8", 1.0),          # exact
    ("sort 5 2 8 1", "", 0.0),                 # empty
    ("sort 5 2 8 1", "1 2 5", 0.75),           # one item missing
    ("sort 5 2 8 1", "1 2 5 8 8", 0.75),       # one extra item costs as much as a missing one
    ("sort 5 2 8 1", "2 1 5 8", 0.75),         # one swap: LCS 3 of 4
    ("reverse 1 2 3", "3 2 1", 1.0),
    ("reverse 1 2 3", "1 2 3", 1 / 3),
    ("copy 4 4 7", "4 7", 2 / 3),
    ("copy 4 4 7", "4 x 4 7", 1 - 1 / 3),      # a non-number is an extra item that never matches
    ("sort 3 1 =>", "1 3", 1.0),               # the chat suffix is accepted
])
def test_gold_reward_hand_cases(prompt, response, expected):
    assert gold_reward(prompt, response) == pytest.approx(expected)


def test_gold_reward_extra_penalty_is_configurable():
    assert gold_reward("copy 1 2", "1 2 3 4", extra_penalty=0.5) == pytest.approx(1 - 0.5 * 2 / 2)


@pytest.mark.parametrize("bad", ["", "hello 1 2", "sort", "sort a b"])
def test_parse_prompt_rejects_other_text(bad):
    with pytest.raises(ValueError):
        parse_prompt(bad)


def test_lcs_length():
    assert lcs_length([1, 2, 3, 4], [1, 3, 4]) == 3
    assert lcs_length([], [1]) == 0
    assert lcs_length([None, 1], [None, 1]) == 1  # unparseable items never match


def test_noisy_teacher_sits_below_the_best_gold():
    spec, rng = TaskSpec(), random.Random(0)
    problems = [Problem("sort", tuple(rng.randrange(20) for _ in range(5))) for _ in range(500)]
    clean = [gold_reward(p.prompt, " ".join(map(str, p.target))) for p in problems]
    noisy = [gold_reward(p.prompt, teacher_response(p, rng, spec)) for p in problems]
    assert sum(clean) / len(clean) == 1.0
    assert 0.6 < sum(noisy) / len(noisy) < 0.95


def test_preferences_follow_gold_but_not_always():
    spec, rng = TaskSpec(), random.Random(1)
    pairs = [preference_pair(Problem("reverse", (1, 2, 3, 4, 5)), rng, spec) for _ in range(2000)]
    decided = [p for p in pairs if p["gold_chosen"] != p["gold_rejected"]]
    agree = sum(p["gold_chosen"] > p["gold_rejected"] for p in decided) / len(decided)
    assert 0.7 < agree < 0.99  # Bradley-Terry labels: mostly, not always, the better answer


def test_task_spec_validates():
    with pytest.raises(ValueError, match="unknown operation"):
        TaskSpec(operations=("sort", "shuffle"))


def test_gold_scores_special_tokens_the_policy_emits_as_wrong_items():
    """`copy 1 2 3` answered `1 2 <pad> <unk> 3`: decoding with skip_special_tokens hid the two extra tokens."""
    import torch

    from salsa.data import build_tokenizer
    from salsa.generation import Rollout, decode_responses, truncate_after_eos

    tokenizer = build_tokenizer(TaskSpec(num_symbols=10))
    prompt = "copy 1 2 3"

    def answer(words):
        ids = torch.tensor([tokenizer.convert_tokens_to_ids(words)])
        response, mask, ended = truncate_after_eos(ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
        rollout = Rollout(torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long),
                          response, mask, ended)
        return gold_reward(prompt, decode_responses(tokenizer, rollout)[0])

    assert answer(["1", "2", "3", "<eos>", "<pad>"]) == 1.0  # EOS and the padding after it are not the answer
    gamed = answer(["1", "2", "<pad>", "<unk>", "3", "<eos>", "<pad>"])
    assert gamed == pytest.approx(1 - 2 / 3)  # all three items, plus two wrong ones at the extra-item cost
    assert answer(["1", "2", "<pad>", "3"]) < 1  # no EOS: still scored up to the end


def test_benchmark_answers_keep_the_special_tokens_the_model_emitted():
    """Answers under test end at EOS but keep an emitted <pad>/<unk>, so the gold and LLM judges see them."""
    import torch
    from types import SimpleNamespace

    from salsa.benchmarks.chat_generation import generate_chat
    from salsa.data import build_tokenizer

    tokenizer = build_tokenizer(TaskSpec(num_symbols=10))
    emitted = tokenizer.convert_tokens_to_ids(["1", "2", "<pad>", "<unk>", "3", "<eos>", "4"])

    class Scripted:  # generate() appends a fixed reply: only the decoding is under test
        config = SimpleNamespace(max_position_embeddings=64)

        def parameters(self):
            yield torch.zeros(1)

        def generate(self, input_ids, attention_mask, **kwargs):
            return torch.cat([input_ids, torch.tensor([emitted] * len(input_ids))], dim=1)

    def reply(**kwargs):
        return generate_chat(Scripted(), tokenizer, [[{"role": "user", "content": "copy 1 2 3"}]], [(0.0, 7)],
                             progress=False, **kwargs)[0]

    kept = reply(keep_special_tokens=True)
    assert kept.split() == ["1", "2", "<pad>", "<unk>", "3"] and gold_reward("copy 1 2 3", kept) < 1.0
    assert reply().split() == ["1", "2", "3"]  # a judge's own verdict text: special tokens dropped


def test_an_answer_cap_above_half_the_context_is_lowered_and_said(capsys):
    import torch
    from types import SimpleNamespace

    from salsa.benchmarks.chat_generation import generate_chat
    from salsa.data import build_tokenizer

    tokenizer = build_tokenizer(TaskSpec(num_symbols=10))
    asked = []

    class Recorder:
        config = SimpleNamespace(max_position_embeddings=64)

        def parameters(self):
            yield torch.zeros(1)

        def generate(self, input_ids, attention_mask, **kwargs):
            asked.append(kwargs["max_new_tokens"])
            return input_ids

    conversations = [[{"role": "user", "content": "copy 1 2 3"}]] * 2
    generate_chat(Recorder(), tokenizer, conversations, [(0.0, 32), (0.0, 40)], progress=False)
    assert sorted(asked) == [32, 32]
    assert capsys.readouterr().err.splitlines() == [
        "warning: max_new_tokens 40 is more than half of the model's 64 positions; replies to 1 prompt(s) are capped "
        "at 32 new tokens"]
