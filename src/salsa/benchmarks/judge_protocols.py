"""Judging protocols: turn answers + a judge into upstream-shaped judgment records.

MT-Bench single-answer grading (FastChat gen_judgment.py, mode single):
  turn 1 with "single-v1", or "single-math-v1" plus the reference answer for math,
  reasoning and coding; turn 2 with the "-multi-turn" variants, which show the whole
  conversation. Judge at temperature 0, 2048 max tokens. Record fields as FastChat's
  (question_id, model, judge, user_prompt, judgment, score, turn, tstamp) + category.

Arena-Hard pairwise (arena-hard-auto gen_judgment.py): two games per question, game 1
  with the baseline as A, game 2 with the model as A. v0.1 (legacy) accumulates replies
  and, while no verdict is found, asks the judge to continue, up to
  number_of_judgment_attempts calls; v2.0 asks once and parses the upper-cased reply.

Score judges (reward, gold) take the same matches but score answers directly
(salsa.judges.scorers documents the mappings); the records keep the same fields.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from salsa.artifacts import StageError
from salsa.benchmarks.answer_formats import Answer
from salsa.benchmarks.arena_hard_scoring import legacy_verdict, v2_verdict
from salsa.benchmarks.data import NEED_REF_CATEGORIES, BenchmarkData, Question
from salsa.benchmarks.mt_bench_scoring import is_valid_rating, parse_rating
from salsa.judges import ChatRequest, ScoreJudge, TextJudge

# Upstream's (v0.1) follow-up when a reply has no verdict; kept verbatim for protocol fidelity.
CONTINUE_MESSAGE = "continue your judgment and finish by outputting a final verdict label"
MT_JUDGE_MAX_TOKENS = 2048


@dataclasses.dataclass
class JudgingResult:
    records: list[dict]
    parse_failures: int = 0
    api_errors: int = 0
    n_judged: int = 0          # judge verdicts asked for: one per MT-Bench turn, one per Arena-Hard game

    @property
    def failures(self) -> int:
        return self.parse_failures + self.api_errors

    @property
    def failure_fraction(self) -> float:
        return self.failures / self.n_judged if self.n_judged else 0.0


# ---------------------------------------------------------------- MT-Bench

@dataclasses.dataclass
class _SingleMatch:
    question: Question
    answer: Answer
    turn: int


def _mt_matches(data: BenchmarkData, answers: dict[Any, Answer]) -> list[_SingleMatch]:
    matches = []
    for question in data.questions:
        answer = answers.get(question.question_id)
        if answer is None:
            continue
        matches.append(_SingleMatch(question, answer, 1))
        if len(question.turns) >= 2 and len(answer.turns) >= 2:
            matches.append(_SingleMatch(question, answer, 2))
    return matches


def mt_judge_messages(data: BenchmarkData, match: _SingleMatch) -> tuple[str, list[dict]]:
    """(prompt name, [system, user]) exactly as FastChat builds them."""
    q, a = match.question, match.answer
    needs_reference = q.category in NEED_REF_CATEGORIES
    name = ("single-math-v1" if needs_reference else "single-v1") + ("-multi-turn" if match.turn == 2 else "")
    prompt = data.judge_prompts.get(name)
    if prompt is None:
        raise StageError(f"judge prompt {name!r} not found (MT-Bench judge_prompts.jsonl)")
    kwargs: dict[str, str] = {}
    if needs_reference:
        reference = data.reference_answers.get(q.question_id)
        if not reference:
            raise StageError(f"no reference answer for MT-Bench question {q.question_id} ({q.category})")
        kwargs["ref_answer_1"] = reference[0]
        if match.turn == 2:
            kwargs["ref_answer_2"] = reference[1]
    if match.turn == 2:
        user = prompt["prompt_template"].format(question_1=q.turns[0], question_2=q.turns[1],
                                                answer_1=a.turns[0], answer_2=a.turns[1], **kwargs)
    else:
        user = prompt["prompt_template"].format(question=q.turns[0], answer=a.turns[0], **kwargs)
    return name, [{"role": "system", "content": prompt["system_prompt"]}, {"role": "user", "content": user}]


def conversation(question: Question, answer: Answer, turns: int) -> list[dict]:
    messages = []
    for q_turn, a_turn in list(zip(question.turns, answer.turns))[:turns]:
        messages += [{"role": "user", "content": q_turn}, {"role": "assistant", "content": a_turn}]
    return messages


def judge_mt_bench(data: BenchmarkData, answers: dict[Any, Answer], judge: TextJudge | ScoreJudge,
                   max_tokens: int | None = None, temperature: float = 0.0, progress: bool = True) -> JudgingResult:
    matches = _mt_matches(data, answers)
    result = JudgingResult([], n_judged=len(matches))
    if isinstance(judge, ScoreJudge):
        scores = judge.score([conversation(m.question, m.answer, m.turn) for m in matches], progress)
        for match, score in zip(matches, scores):
            rating = judge.rate(score)
            result.records.append(_mt_record(match, [judge.name, judge.rating_rule], "",
                                              f"{judge.name} score {score:.6f}; rating [[{rating:.4f}]]",
                                              rating, raw_score=score))
        return result
    prompts = [mt_judge_messages(data, m) for m in matches]
    requests = [ChatRequest.of(messages, temperature, max_tokens or MT_JUDGE_MAX_TOKENS) for _, messages in prompts]
    completions = judge.complete_batch(requests, progress, desc="MT-Bench judging")
    for match, (name, messages), completion in zip(matches, prompts, completions):
        extra = {}
        if completion.error:
            result.api_errors += 1
            extra["error"] = completion.error
        rating = parse_rating(completion.text)
        if not is_valid_rating(rating) and not completion.error:   # no rating, or one outside 1-10
            result.parse_failures += 1
            judge.stats.add("parse_failures")
        result.records.append(_mt_record(match, [judge.name, name], messages[1]["content"],
                                          completion.text or "$ERROR$", rating, **extra))
    return result


def _mt_record(match: _SingleMatch, judge: list[str], user_prompt: str, judgment: str, score: float,
               **extra: Any) -> dict:
    return {"question_id": match.question.question_id, "model": match.answer.model_id, "judge": judge,
            "user_prompt": user_prompt, "judgment": judgment, "score": score, "turn": match.turn,
            "tstamp": time.time(), "category": match.question.category, **extra}


# ---------------------------------------------------------------- Arena-Hard

def arena_messages(data: BenchmarkData, question: Question, first: Answer, second: Answer) -> list[dict]:
    """[system, user] for one game, with ``first`` shown as assistant A."""
    settings = data.arena_settings
    if settings is None:
        raise StageError(f"{data.name}: a text judge needs judge settings (pass --judge-config)")
    if settings.legacy:
        args = {f"question_{i + 1}": t for i, t in enumerate(question.turns)}
        args.update({f"answer_{i + 1}": t for i, t in enumerate(first.turns)})
        args.update({f"answer_{i + 1 + len(first.turns)}": t for i, t in enumerate(second.turns)})
    else:
        args = {"QUESTION": question.turns[0], "ANSWER_A": first.turns[-1], "ANSWER_B": second.turns[-1]}
    try:
        user = settings.prompt_template.format(**args)
    except (KeyError, IndexError) as err:
        raise StageError(f"{data.name}: judge prompt template needs {err} which this question lacks") from None
    return [{"role": "system", "content": settings.system_prompt(question.category)},
            {"role": "user", "content": user}]


def judge_arena(data: BenchmarkData, answers: dict[Any, Answer], baselines: dict[Any, Answer],
                judge: TextJudge | ScoreJudge, max_tokens: int | None = None, temperature: float | None = None,
                progress: bool = True, legacy: bool = True) -> JudgingResult:
    pairs = [(q, answers[q.question_id], baselines[q.question_id]) for q in data.questions
             if q.question_id in answers and q.question_id in baselines]
    if isinstance(judge, ScoreJudge):
        return _score_judge_arena(pairs, judge, legacy, progress)
    settings = data.arena_settings
    if settings is None:
        raise StageError(f"{data.name}: a text judge needs judge settings (pass --judge-config)")
    legacy = settings.legacy
    temperature = settings.temperature if temperature is None else temperature
    max_tokens = max_tokens or settings.max_tokens
    # One conversation per game; game 1 puts the baseline first (as A).
    games = [{"messages": arena_messages(data, q, *((b, a) if g == 0 else (a, b))), "judgment": "",
              "score": None, "error": None, "replies": []} for q, a, b in pairs for g in (0, 1)]
    active = list(range(len(games)))
    for attempt in range(settings.attempts):
        requests = [ChatRequest.of(games[i]["messages"], temperature, max_tokens) for i in active]
        completions = judge.complete_batch(requests, progress, desc=f"Arena-Hard judging (round {attempt + 1})")
        still_open = []
        for i, completion in zip(active, completions):
            game = games[i]
            if not completion.ok:
                game["error"] = completion.error
                continue
            game["judgment"] += "\n" + completion.text
            game["replies"].append(completion.text)
            if legacy:
                game["score"], again = legacy_verdict(game["judgment"], settings.regex_patterns[0])
            else:
                game["score"], again = v2_verdict(completion.text, settings.regex_patterns), False
            game["messages"] = game["messages"] + [{"role": "assistant", "content": completion.text}]
            if again and attempt + 1 < settings.attempts:
                game["messages"] = game["messages"] + [{"role": "user", "content": CONTINUE_MESSAGE}]
                still_open.append(i)
        active = still_open
        if not active:
            break
    result = JudgingResult([], n_judged=2 * len(pairs))
    for k, (question, answer, baseline) in enumerate(pairs):
        pair_games = []
        for game in games[2 * k:2 * k + 2]:
            if game["error"]:
                result.api_errors += 1
            elif game["score"] is None:
                result.parse_failures += 1
                judge.stats.add("parse_failures")
            pair_games.append(_game_record(game, legacy))
        result.records.append(_arena_record(question, answer, baseline, judge.name, pair_games, legacy))
    return result


def _game_record(game: dict, legacy: bool) -> dict:
    if legacy:
        record = {"user_prompt": game["messages"][1]["content"], "judgment": game["judgment"], "score": game["score"]}
    else:
        reply = game["replies"][-1] if game["replies"] else None
        record = {"score": game["score"], "judgment": {"answer": reply}, "prompt": game["messages"][:2]}
    if game["error"]:
        record["error"] = game["error"]
    return record


def _arena_record(question: Question, answer: Answer, baseline: Answer, judge: str, games: list[dict],
                  legacy: bool, **extra: Any) -> dict:
    if legacy:
        return {"question_id": question.question_id, "model": answer.model_id, "judge": judge, "games": games,
                "baseline": baseline.model_id, "category": question.category, **extra}
    return {"uid": question.question_id, "category": question.category, "judge": judge,
            "model": answer.model_id, "baseline": baseline.model_id, "games": games, **extra}


def _score_judge_arena(pairs: list[tuple[Question, Answer, Answer]], judge: ScoreJudge, legacy: bool,
                       progress: bool) -> JudgingResult:
    conversations = [conversation(q, ans, 1) for q, a, b in pairs for ans in (a, b)]
    scores = judge.score(conversations, progress)
    result = JudgingResult([], n_judged=2 * len(pairs))
    for k, (question, answer, baseline) in enumerate(pairs):
        model_score, baseline_score = scores[2 * k], scores[2 * k + 1]
        games = []
        for first, second in ((baseline_score, model_score), (model_score, baseline_score)):
            label = judge.verdict(first, second)
            text = f"{judge.name}: score(A)={first:.6f} score(B)={second:.6f}; verdict [[{label}]]"
            games.append({"user_prompt": "", "judgment": text, "score": label} if legacy
                         else {"score": label, "judgment": {"answer": text}, "prompt": []})
        result.records.append(_arena_record(question, answer, baseline, judge.name, games, legacy,
                                            model_score=model_score, baseline_score=baseline_score))
    return result
