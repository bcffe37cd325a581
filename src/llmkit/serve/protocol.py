"""OpenAI-compatible request models: validated strictly, converted to engine parameters.

Unknown fields are accepted (clients send many) and logged; known fields are checked for type
and range, and ``None`` always means "the server default" (never ``x or default``: a
temperature of 0 is legitimate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from llmkit.config.schema import GenerateConfig
from llmkit.errors import UsageError
from llmkit.generate.sampling import SamplingParams

MAX_N = 8
MAX_STOP = 4

Finite = Annotated[float, Field(allow_inf_nan=False)]


class RequestError(Exception):
    """A request that cannot be served as asked: answered 400, naming the field in ``param``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


@dataclass(frozen=True)
class EngineRequest:
    """A checked request as the engine takes it: prompt ids and one SamplingParams per choice."""

    prompt: list[int]
    params: list[SamplingParams]
    stream: bool
    include_usage: bool


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool = False


class _Sampling(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(max_length=256)
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    temperature: Annotated[Finite, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Finite, Field(gt=0, le=1)] | None = None
    top_k: Annotated[StrictInt, Field(ge=-1)] | None = None
    repetition_penalty: Annotated[Finite, Field(gt=0, le=10)] | None = None
    presence_penalty: Annotated[Finite, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[Finite, Field(ge=-2, le=2)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_N)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] | None = None
    user: StrictStr | None = None
    ignore_eos: StrictBool = False  # vLLM's extension: generate past end-of-text tokens

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP or any(not s or len(s) > 256 for s in stops):
            raise ValueError(f"at most {MAX_STOP} stop strings of 1-256 characters")
        return value

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def to_sampling_params(self, defaults: GenerateConfig, room: int, index: int = 0) -> SamplingParams:
        """Engine parameters: each None takes the server default; max_tokens is capped to ``room``.

        Documented behaviour: a max_tokens larger than the room left in the context window is
        reduced to that room, and the choice ends with finish_reason "length".
        """
        wanted = self.requested_max_tokens()
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return SamplingParams.from_config(
            defaults, max_new_tokens=max(1, min(wanted if wanted is not None else defaults.max_new_tokens, room)),
            temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k if self.top_k not in (-1, 0) else None,  # OpenAI-style "off" means the default
            repetition_penalty=self.repetition_penalty, stop=stops,
            seed=self.seed + index if self.seed is not None else None, ignore_eos=self.ignore_eos)

    def prompt_ids(self, tokenizer: Any, window: int, max_token_bytes: int) -> list[int]:
        """The prompt as token ids (each request kind renders its own)."""
        raise NotImplementedError

    def to_engine_request(self, tokenizer: Any, defaults: GenerateConfig, window: int,
                          max_token_bytes: int) -> EngineRequest:
        """Everything the engine needs, checked: a RequestError (a 400) for a prompt that is empty or
        does not fit the ``window``, a max_tokens below 1, or sampling parameters out of range."""
        ids = self.prompt_ids(tokenizer, window, max_token_bytes)
        if not ids:
            raise RequestError("the prompt is empty", self.prompt_field)
        if len(ids) >= window:
            raise RequestError(f"the prompt is {len(ids)} tokens; the model's context is {window}", self.prompt_field,
                               "context_length_exceeded")
        wanted = self.requested_max_tokens()
        if wanted is not None and wanted <= 0:
            raise RequestError("max_tokens must be at least 1", "max_tokens")
        if self.top_k is not None and self.top_k > len(tokenizer):
            raise RequestError(f"top_k must be at most the vocabulary size, {len(tokenizer)} (or -1: off)", "top_k")
        try:
            params = [self.to_sampling_params(defaults, window - len(ids), i) for i in range(self.n)]
        except UsageError as exc:
            raise RequestError(exc.detail or exc.summary) from None
        include_usage = bool(self.stream and self.stream_options and self.stream_options.include_usage)
        return EngineRequest(ids, params, self.stream, include_usage)

    prompt_field: ClassVar[str] = "prompt"


def _encode(tokenizer: Any, text: str, window: int, max_token_bytes: int, param: str) -> list[int]:
    # Reject hopeless prompts before tokenizing them: a token covers at most max_token_bytes bytes.
    if len(text) // max_token_bytes >= window:
        raise RequestError(f"the prompt is far longer than the model's {window}-token context", param,
                           "context_length_exceeded")
    return tokenizer.encode(text, add_special_tokens=False)


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: StrictStr | Annotated[list[StrictInt], Field(min_length=1)]
    echo: StrictBool = False
    logprobs: StrictInt | None = None

    def prompt_ids(self, tokenizer: Any, window: int, max_token_bytes: int) -> list[int]:
        if isinstance(self.prompt, str):
            return _encode(tokenizer, self.prompt, window, max_token_bytes, "prompt")
        if any(t < 0 or t >= len(tokenizer) for t in self.prompt):
            raise RequestError(f"token ids must be within [0, {len(tokenizer)})", "prompt")
        return list(self.prompt)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer"]
    content: StrictStr | list[ContentPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=1024)]

    prompt_field: ClassVar[str] = "messages"

    def chat(self) -> list[dict[str, str]]:
        """Messages as the chat template expects them ("developer" is a system message)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

    def prompt_ids(self, tokenizer: Any, window: int, max_token_bytes: int) -> list[int]:
        if tokenizer.chat_template is None:
            raise RequestError("this model has no chat template; use /v1/completions", "messages")
        text = tokenizer.apply_chat_template(self.chat(), tokenize=False, add_generation_prompt=True)
        return _encode(tokenizer, text, window, max_token_bytes, "messages")


# --- responses ---------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: dict[str, str]
    """The new text (``{"content": ...}``); the first chunk carries the role, the last may be empty."""
    finish_reason: str | None


class _Response(BaseModel):
    id: str
    created: int
    model: str

    def sse(self) -> bytes:
        """One server-sent event (``usage`` only when set, as OpenAI sends it)."""
        return f"data: {self.model_dump_json(exclude={'usage'} if getattr(self, 'usage', None) is None else None)}\n\n".encode()


class CompletionResponse(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatCompletionResponse(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error object; the message is cut so no body exceeds a few KB."""
    return {"error": {"message": message[:2000], "type": kind, "param": param, "code": code}}
