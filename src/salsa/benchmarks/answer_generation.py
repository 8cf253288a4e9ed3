"""Answer generation for the benchmarks, with the upstream decoding settings.

MT-Bench (FastChat gen_model_answer.py): temperature by category (writing/roleplay 0.7,
  stem/humanities 0.1, extraction/math/coding/reasoning 0.0; other categories 0.7; a
  question's own "required_temperature" wins), 1024 max new tokens per turn, greedy below
  1e-4. Turn 2 is generated with the model's own turn-1 answer in the conversation.
Arena-Hard (gen_answer.py with the shipped configs): one turn, temperature 0, 4096 max
  new tokens (v2.0 sets max tokens per API endpoint upstream; 4096 here too).
Embedded MT / Arena: one turn, greedy, 32 max new tokens (a list answer is at most
  ~10 tokens); every category is a list operation with one right answer, like MT-Bench's
  temperature-0 categories.

``max_new_tokens`` caps every setting (tiny CPU models); it never raises one.
"""

from __future__ import annotations

from typing import Sequence

from salsa.benchmarks import ARENA_V01, ARENA_V2, EMBEDDED_ARENA, EMBEDDED_MT, MT_BENCH
from salsa.benchmarks.answer_formats import arena_legacy_answer, arena_v2_answer, fastchat_answer
from salsa.benchmarks.chat_generation import generate_chat
from salsa.benchmarks.data import Question

MT_TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                  "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
MT_DEFAULT_TEMPERATURE = 0.7
MT_MAX_NEW_TOKENS = 1024
ARENA_TEMPERATURE, ARENA_MAX_NEW_TOKENS = 0.0, 4096
EMBEDDED_TEMPERATURE, EMBEDDED_MAX_NEW_TOKENS = 0.0, 32


def decoding_settings(benchmark: str, question: Question, temperature_override: float | None = None,
                      cap: int | None = None) -> tuple[float, int]:
    """(temperature, max new tokens) of one question, as upstream chooses them."""
    if benchmark == MT_BENCH:
        temperature = (question.required_temperature if question.required_temperature is not None
                       else MT_TEMPERATURE.get(question.category, MT_DEFAULT_TEMPERATURE))
        max_new = MT_MAX_NEW_TOKENS
    elif benchmark in (ARENA_V01, ARENA_V2):
        temperature, max_new = ARENA_TEMPERATURE, ARENA_MAX_NEW_TOKENS
    else:
        temperature, max_new = EMBEDDED_TEMPERATURE, EMBEDDED_MAX_NEW_TOKENS
    if temperature_override is not None:
        temperature = temperature_override
    return float(temperature), min(max_new, cap) if cap else max_new


def generate_answers(model, tokenizer, benchmark: str, questions: Sequence[Question], model_id: str, *,
                     seed: int = 0, batch_size: int = 16, cap: int | None = None,
                     temperature_override: float | None = None, progress: bool = True) -> list[dict]:
    """Answer records in the benchmark's upstream format, in question order."""
    settings = [decoding_settings(benchmark, q, temperature_override, cap) for q in questions]
    turns: list[list[str]] = [[] for _ in questions]
    token_lens: list[list[int]] = [[] for _ in questions]
    n_turns = [len(q.turns) if benchmark == MT_BENCH else 1 for q in questions]
    for turn in range(max(n_turns, default=0)):
        # Turn t sees the model's own earlier answers, as in FastChat.
        todo = [i for i, n in enumerate(n_turns) if n > turn]
        conversations = []
        for i in todo:
            messages = []
            for k in range(turn):
                messages += [{"role": "user", "content": questions[i].turns[k]},
                             {"role": "assistant", "content": turns[i][k]}]
            conversations.append(messages + [{"role": "user", "content": questions[i].turns[turn]}])
        counts: list[int] = []
        replies = generate_chat(model, tokenizer, conversations, [settings[i] for i in todo], batch_size=batch_size,
                                seed=seed + 1000 * turn, progress=progress, desc=f"{benchmark} turn {turn + 1}",
                                token_counts=counts, keep_special_tokens=True)  # emitted pads/unks are judged
        for i, reply, count in zip(todo, replies, counts):
            turns[i].append(reply)
            token_lens[i].append(count)
    return [answer_record(benchmark, q, model_id, t, n) for q, t, n in zip(questions, turns, token_lens)]


def answer_record(benchmark: str, question: Question, model_id: str, turns: list[str], token_lens: list[int]) -> dict:
    if benchmark == MT_BENCH:
        return fastchat_answer(question.question_id, model_id, turns)
    if benchmark == EMBEDDED_MT:
        return fastchat_answer(question.question_id, model_id, turns, category=question.category)
    if benchmark == ARENA_V2:
        return arena_v2_answer(question.question_id, model_id, question.turns[0], turns[0], token_lens[0],
                               category=question.category)
    extra = {"category": question.category} if benchmark == EMBEDDED_ARENA else {}
    return arena_legacy_answer(question.question_id, model_id, turns, token_lens, **extra)
