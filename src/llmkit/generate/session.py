"""`llmkit generate` and `llmkit chat`'s entry point: a model opened for the terminal with its
run's sampling defaults (flags overriding), continuing text or holding a conversation, streamed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.errors import UsageError
from llmkit.generate.decode import stream
from llmkit.generate.sampling import SamplingParams
from llmkit.model.load import load_for_inference
from llmkit.rundir import generate_defaults


@dataclass
class Session:
    """A loaded model and tokenizer, the sampling parameters, and (chat) the conversation so far."""

    model: Any
    tokenizer: Any
    model_dir: Path
    params: SamplingParams
    history: list[dict[str, str]] = field(default_factory=list)

    def complete(self, prompt: str, chat: bool = False) -> Iterator[str]:
        """The continuation of ``prompt`` (as a user turn of the chat template with ``chat``), in pieces."""
        if not prompt.strip():
            raise UsageError("the prompt is empty", "", "pass --prompt 'some text'")
        if chat:
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                     tokenize=True, return_dict=False)
        else:
            ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        for ev in stream(self.model, self.tokenizer, [ids], [self.params]):
            yield ev.text

    def say(self, message: str) -> Iterator[str]:
        """The model's answer to ``message`` in the conversation, in pieces; both join the history.
        The oldest turns that no longer fit the model's window are forgotten (a system message stays)."""
        if not self.tokenizer.chat_template:
            raise UsageError(f"the tokenizer in {self.model_dir} has no chat template", "chat needs one to format turns",
                             "use `llmkit generate` for plain continuation")
        history = self.history
        history.append({"role": "user", "content": message})
        window = self.model.config.max_position_embeddings
        ids = self._render()
        while len(ids) >= window - 8 and len(history) > 1:
            history.pop(1 if history[0]["role"] == "system" and len(history) > 2 else 0)
            ids = self._render()
        answer = ""
        for ev in stream(self.model, self.tokenizer, [ids], [self.params]):
            answer += ev.text
            yield ev.text
        history.append({"role": "assistant", "content": answer})

    def warm(self) -> None:
        """Generate two tokens and forget them: the thread pools a generation uses are started now."""
        token = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        for _ in stream(self.model, self.tokenizer, [[token]], [SamplingParams(max_new_tokens=2, temperature=0)]):
            pass

    def _render(self) -> list[int]:
        ids: list[int] = self.tokenizer.apply_chat_template(self.history, add_generation_prompt=True, tokenize=True,
                                                            return_dict=False)
        return ids


def open_session(model_path: str | Path, system: str | None = None, chat: bool = False,
                 **overrides: Any) -> Session:
    """Load a run's model (or a model directory) for generation, with the run's ``generate``
    section as sampling defaults and ``overrides`` (max_new_tokens, temperature, top_k, top_p,
    repetition_penalty, stop, seed; None keeps the default). ``chat``: a conversation, refused
    without a chat template; ``system``: its system message."""
    params = SamplingParams.from_config(generate_defaults(model_path), **overrides)
    model, tokenizer, model_dir = load_for_inference(model_path)
    if chat and not tokenizer.chat_template:
        raise UsageError(f"the tokenizer in {model_dir} has no chat template", "chat needs one to format turns",
                         "use `llmkit generate` for plain continuation")
    history = [{"role": "system", "content": system}] if system else []
    return Session(model, tokenizer, model_dir, params, history)
