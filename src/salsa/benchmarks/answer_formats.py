"""Answer records in the upstream formats, so upstream tools can judge our answers.

* FastChat model_answer (MT-Bench):   {question_id, answer_id, model_id, choices: [{index, turns: [str]}], tstamp}
* Arena-Hard legacy (v0.1):           same, but turns are [{content, token_len}]
* Arena-Hard v2.0:                    {uid, ans_id, model, messages: [user, {role: assistant,
                                       content: {answer}}], tstamp, metadata: {token_len, header_count, ...}}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from salsa.artifacts import StageError
from salsa.benchmarks.files import read_jsonl


@dataclasses.dataclass(frozen=True)
class Answer:
    question_id: Any
    model_id: str
    turns: tuple[str, ...]


def answer_id(*parts: Any) -> str:
    """A stable id (upstream uses random shortuuids; a hash keeps reruns byte-comparable)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:22]


def fastchat_answer(question_id: Any, model_id: str, turns: list[str], **extra: Any) -> dict:
    return {"question_id": question_id, "answer_id": answer_id(model_id, question_id, turns),
            "model_id": model_id, "choices": [{"index": 0, "turns": list(turns)}], "tstamp": time.time(), **extra}


def arena_legacy_answer(question_id: Any, model_id: str, turns: list[str], token_lens: list[int],
                        **extra: Any) -> dict:
    return {"question_id": question_id, "answer_id": answer_id(model_id, question_id, turns), "model_id": model_id,
            "choices": [{"index": 0, "turns": [{"content": t, "token_len": n} for t, n in zip(turns, token_lens)]}],
            "tstamp": time.time(), **extra}


def arena_v2_answer(uid: str, model: str, prompt: str, answer: str, token_len: int, **extra: Any) -> dict:
    return {"uid": uid, "ans_id": answer_id(model, uid, answer), "model": model,
            "messages": [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": {"answer": answer}}],
            "tstamp": time.time(), "metadata": markdown_metadata(answer, token_len), **extra}


_CODE_BLOCK = re.compile(r"```.*?```", re.DOTALL)


def markdown_metadata(text: str, token_len: int) -> dict:
    """The style features upstream's style control reads (counted outside code blocks)."""
    prose = _CODE_BLOCK.sub("", text)
    return {
        "token_len": token_len,
        "header_count": {f"h{k}": len(re.findall(rf"^{'#' * k} ", prose, re.MULTILINE)) for k in range(1, 7)},
        "list_count": {"ordered": len(re.findall(r"^\s*\d+\. ", prose, re.MULTILINE)),
                       "unordered": len(re.findall(r"^\s*[-*+] ", prose, re.MULTILINE))},
        "bold_count": {"**": len(re.findall(r"\*\*[^*\n]+\*\*", prose)),
                       "__": len(re.findall(r"__[^_\n]+__", prose))},
    }


def parse_answer(row: dict, where: str) -> Answer:
    """An Answer from any of the three formats (the format is told by its fields)."""
    try:
        if "messages" in row:
            content = row["messages"][-1]["content"]
            text = content["answer"] if isinstance(content, dict) else content
            if not isinstance(text, str):
                raise TypeError("answer is not a string")
            return Answer(row["uid"], str(row.get("model", "")), (text,))
        turns = row["choices"][0]["turns"]
        texts = tuple(t["content"] if isinstance(t, dict) else t for t in turns)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("a turn is not a string")
        return Answer(row["question_id"], str(row.get("model_id", row.get("model", ""))), texts)
    except (KeyError, IndexError, TypeError) as err:
        raise StageError(f"{where}: not an answer record in a known format "
                         f"({type(err).__name__}: {err})") from None


def read_answers(path: str | Path) -> dict[Any, Answer]:
    """Answers by question id (a later line for the same question replaces an earlier one, as upstream)."""
    return {a.question_id: a for a in (parse_answer(row, f"{path}:{n}") for n, row in read_jsonl(path))}
