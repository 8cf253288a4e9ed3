"""A local judge behind the OpenAI chat-completions protocol, for the rehearsals of the API-judged overlays.

The 7B overlays judge MT-Bench and Arena-Hard with `judge: openai`; their rehearsals keep that judge and
set OPENAI_BASE_URL to this loopback server. Behind it is a real (tiny, randomly initialised) causal LM
that picks its verdict among the formats the judge prompt asks for ("Rating: [[1]]" .. "[[10]]", or
"[[A>>B]]" .. "[[B>>A]]") by its own log-likelihood after the chat-templated prompt: the verdicts carry
no judgement, but they parse, so the stages that score them and the tables run on real verdicts. A
prompt asking for neither gets the model's greedy continuation. Prompts are cut to their last
MAX_PROMPT_TOKENS tokens (Arena-Hard's baseline answers are long; the fixture model's vocabulary is small).
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_PROMPT_TOKENS = 512
ARENA_VERDICTS = ["[[A>>B]]", "[[A>B]]", "[[A=B]]", "[[B>A]]", "[[B>>A]]"]
RATINGS = [f"Rating: [[{k}]]" for k in range(1, 11)]


def verdicts_asked_for(text: str) -> list[str]:
    if "[[A>>B]]" in text or "[[A>B]]" in text:
        return ARENA_VERDICTS
    if re.search(r"\[\[rating\]\]|Rating: \[\[\d+\]\]", text):
        return RATINGS
    return []


class LikelihoodJudge:
    def __init__(self, model_dir: str):
        import torch

        from salsa.modeling import load_causal_lm, load_tokenizer

        self.torch = torch
        self.tokenizer = load_tokenizer(model_dir)
        self.model = load_causal_lm(model_dir).eval()
        self.lock = threading.Lock()   # one forward at a time: torch in threads only adds contention

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"][-MAX_PROMPT_TOKENS:]

    def reply(self, messages: list[dict], max_tokens: int) -> str:
        torch = self.torch
        prompt = self.prompt_ids(messages)
        candidates = verdicts_asked_for(" ".join(m.get("content") or "" for m in messages))
        with self.lock, torch.no_grad():
            if not candidates:
                out = self.model.generate(torch.tensor([prompt]), max_new_tokens=max(1, min(max_tokens, 16)),
                                          do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
                return self.tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)
            scores = []
            for candidate in candidates:
                ids = self.tokenizer(candidate, add_special_tokens=False)["input_ids"]
                logits = self.model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1]
                scores.append(torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids)[:, None]).sum())
        return candidates[int(torch.stack(scores).argmax())]


class JudgeServer:
    """ThreadingHTTPServer on 127.0.0.1 (at `port`, 0 = any free one); records each request's model name."""

    def __init__(self, model_dir: str, port: int = 0):
        self.judge = LikelihoodJudge(model_dir)
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                server.requests.append({"model": payload.get("model"), "messages": len(payload.get("messages", []))})
                try:
                    text = server.judge.reply(payload["messages"], int(payload.get("max_tokens")
                                                                       or payload.get("max_completion_tokens") or 16))
                    status, body = 200, {"id": "rehearsal", "object": "chat.completion", "created": 0,
                                         "model": payload.get("model"), "choices": [
                                             {"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}],
                                         "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
                except Exception as err:   # the judge stage counts a 500 as an API error and says so
                    status, body = 500, {"error": {"message": f"{type(err).__name__}: {err}"}}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "JudgeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
