"""OpenAI-compatible request models: validated strictly, converted to engine parameters.

Unknown fields are accepted (clients send many) and logged; known fields are checked for type
and range, and ``None`` always means "the server default" (never ``x or default``: a
temperature of 0 is legitimate).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from llmkit.config.schema import GenerateConfig
from llmkit.errors import UsageError
from llmkit.generate.sampling import SamplingParams

MAX_N = 8
MAX_STOP = 4
MAX_PROMPTS = 32  # prompts in one /v1/completions request
MAX_CHOICES = 64  # prompts x n: sequences one request may add to the batch
MAX_LOGIT_BIAS = 1024

Finite = Annotated[float, Field(allow_inf_nan=False)]

# Known OpenAI fields llmkit does not implement, with the values that ask for nothing (accepted);
# any other value is a 400 naming the field. Both endpoints unless listed under one.
_OFF: dict[str, tuple[Any, ...]] = {
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "parallel_tool_calls": (None, True, False), "response_format": (None, {"type": "text"}), "audio": (None,),
    "modalities": (None, ["text"]), "prediction": (None,), "web_search_options": (None,),
    "reasoning_effort": (None,), "store": (None, False), "service_tier": (None, "auto", "default"),
    "suffix": (None, ""),
}
_WHY = {"tools": "tool calling", "tool_choice": "tool calling", "functions": "function calling",
        "function_call": "function calling", "response_format": "structured output (JSON mode, JSON schema)",
        "audio": "audio output", "modalities": "outputs other than text", "prediction": "predicted outputs",
        "web_search_options": "web search", "reasoning_effort": "reasoning effort", "store": "stored completions",
        "service_tier": "service tiers", "suffix": "insertion (suffix)", "parallel_tool_calls": "tool calling"}


class RequestError(Exception):
    """A request that cannot be served as asked: answered 400, naming the field in ``param``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


@dataclass(frozen=True)
class EngineRequest:
    """A checked request as the engine takes it: one prompt and one SamplingParams per choice.

    Choice ``c`` answers prompt ``c // n`` (OpenAI's order: every choice of the first prompt, then
    the second ...). ``echo``: the prompts' texts when the completion starts with its prompt."""

    prompts: list[list[int]]
    params: list[SamplingParams]
    stream: bool
    include_usage: bool
    n: int = 1
    prompt_tokens: int = 0
    echo: list[str] | None = None
    logprobs: bool = False


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
    repetition_penalty: Annotated[Finite, Field(ge=0.01, le=10)] | None = None  # below 0.01: logits overflow
    presence_penalty: Annotated[Finite, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[Finite, Field(ge=-2, le=2)] | None = None
    logit_bias: Annotated[dict[StrictStr, Annotated[Finite, Field(ge=-100, le=100)]],
                          Field(max_length=MAX_LOGIT_BIAS)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_N)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] | None = None
    user: StrictStr | None = None  # the caller's end-user id: recorded by nobody, changes nothing
    ignore_eos: StrictBool = False  # vLLM's extension: generate past end-of-text tokens

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP or any(not s or len(s) > 256 for s in stops):
            raise ValueError(f"at most {MAX_STOP} stop strings of 1-256 characters")
        return value

    def refused(self) -> None:
        """A RequestError for a known OpenAI field that asks for something llmkit does not do."""
        for name, value in (self.model_extra or {}).items():
            if name in _OFF and value not in _OFF[name]:
                raise RequestError(f"{name}: {_WHY[name]} is not supported by this server", name, "unsupported_field")

    def unknown_fields(self) -> list[str]:
        """Extra fields that are neither implemented nor known-and-refused (logged, then ignored)."""
        return sorted(k for k in (self.model_extra or {}) if k not in _OFF)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def token_logprobs(self) -> int | None:
        """How many alternatives to report per generated token (None: no logprobs)."""
        return None

    def prompt_logprobs(self) -> int | None:
        """Alternatives per prompt token when the prompt is echoed with logprobs (None: not)."""
        return None

    def bias(self, vocab: int) -> tuple[tuple[int, float], ...]:
        out = []
        for key, value in (self.logit_bias or {}).items():
            if not key.isdigit() or int(key) >= vocab:
                raise RequestError(f"logit_bias keys must be token ids within [0, {vocab}) (got {key[:20]!r})",
                                   "logit_bias")
            out.append((int(key), float(value)))
        return tuple(out)

    def to_sampling_params(self, defaults: GenerateConfig, room: int, index: int = 0,
                           bias: tuple[tuple[int, float], ...] = ()) -> SamplingParams:
        """Engine parameters: each None takes the server default; max_tokens is capped to ``room``.

        Documented behaviour: a max_tokens larger than the room left in the context window is
        reduced to that room, and the choice ends with finish_reason "length".
        """
        wanted = self.requested_max_tokens()
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        echo_only = wanted == 0 and self.prompt_logprobs() is not None
        return SamplingParams.from_config(
            defaults, max_new_tokens=0 if echo_only else max(1, min(wanted if wanted is not None
                                                                    else defaults.max_new_tokens, room)),
            temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k if self.top_k not in (-1, 0) else None,  # OpenAI-style "off" means the default
            repetition_penalty=self.repetition_penalty, stop=stops,
            seed=self.seed + index if self.seed is not None else None, ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty, logit_bias=bias,
            logprobs=self.token_logprobs(), prompt_logprobs=self.prompt_logprobs())

    def prompt_list(self, tokenizer: Any, window: int, max_token_bytes: int) -> list[list[int]]:
        """The prompts as token ids (each request kind renders its own)."""
        raise NotImplementedError

    def echo_texts(self, tokenizer: Any, prompts: list[list[int]]) -> list[str] | None:
        return None

    def allows_zero_tokens(self) -> bool:
        return False

    def to_engine_request(self, tokenizer: Any, defaults: GenerateConfig, window: int,
                          max_token_bytes: int) -> EngineRequest:
        """Everything the engine needs, checked against the model: a RequestError (a 400) for a
        prompt that is empty or does not fit the ``window``, a max_tokens below 1, sampling
        parameters out of range, top_k or logit_bias beyond the vocabulary, too many choices."""
        self.refused()
        vocab = len(tokenizer)
        prompts = self.prompt_list(tokenizer, window, max_token_bytes)
        if len(prompts) * self.n > MAX_CHOICES:
            raise RequestError(f"{len(prompts)} prompts x n={self.n} is more than {MAX_CHOICES} sequences", "n")
        for ids in prompts:
            if not ids:
                raise RequestError("the prompt is empty", self.prompt_field)
            if len(ids) >= window:
                raise RequestError(f"the prompt is {len(ids)} tokens; the model's context is {window}",
                                   self.prompt_field, "context_length_exceeded")
        wanted = self.requested_max_tokens()
        if wanted is not None and wanted < (0 if self.allows_zero_tokens() else 1):
            raise RequestError("max_tokens must be at least 1" + (" (0 only with echo)" if isinstance(self, CompletionRequest)
                                                                  else ""), "max_tokens")
        if self.top_k is not None and self.top_k > vocab:
            raise RequestError(f"top_k must be at most the vocabulary size, {vocab} (or -1: off)", "top_k")
        bias = self.bias(vocab)
        try:
            params = [self.to_sampling_params(defaults, window - len(ids), i, bias)
                      for ids in prompts for i in range(self.n)]
        except UsageError as exc:
            raise RequestError(exc.detail or exc.summary) from None
        include_usage = bool(self.stream and self.stream_options and self.stream_options.include_usage)
        return EngineRequest([ids for ids in prompts for _ in range(self.n)], params, self.stream, include_usage,
                             self.n, sum(map(len, prompts)), self.echo_texts(tokenizer, prompts),
                             self.token_logprobs() is not None)

    prompt_field: ClassVar[str] = "prompt"


def _encode(tokenizer: Any, text: str, window: int, max_token_bytes: int, param: str) -> list[int]:
    # Reject hopeless prompts before tokenizing them: a token covers at most max_token_bytes bytes.
    if len(text) // max_token_bytes >= window:
        raise RequestError(f"the prompt is far longer than the model's {window}-token context", param,
                           "context_length_exceeded")
    return tokenizer.encode(text, add_special_tokens=False)


TokenIds = Annotated[list[StrictInt], Field(min_length=1)]


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=MAX_PROMPTS)] | TokenIds | \
        Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]
    echo: StrictBool = False
    logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = None
    best_of: StrictInt | None = None

    def refused(self) -> None:
        super().refused()
        if self.best_of is not None and self.best_of != self.n:
            raise RequestError("best_of other than n is not supported by this server (it returns every choice)",
                               "best_of", "unsupported_field")

    def token_logprobs(self) -> int | None:
        return self.logprobs

    def prompt_logprobs(self) -> int | None:
        if not self.echo:
            return None
        return self.logprobs if self.logprobs is not None else (0 if self.requested_max_tokens() == 0 else None)

    def allows_zero_tokens(self) -> bool:
        return self.echo

    def prompt_list(self, tokenizer: Any, window: int, max_token_bytes: int) -> list[list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [_encode(tokenizer, p, window, max_token_bytes, "prompt")]
        if all(isinstance(x, str) for x in p):
            return [_encode(tokenizer, x, window, max_token_bytes, "prompt") for x in p]  # type: ignore[arg-type]
        lists = [p] if all(isinstance(x, int) for x in p) else p
        for ids in lists:
            if any(t < 0 or t >= len(tokenizer) for t in ids):  # type: ignore[union-attr]
                raise RequestError(f"token ids must be within [0, {len(tokenizer)})", "prompt")
        return [list(ids) for ids in lists]  # type: ignore[union-attr]

    def echo_texts(self, tokenizer: Any, prompts: list[list[int]]) -> list[str] | None:
        if not self.echo:
            return None
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, str) for x in p):
            return list(p)  # type: ignore[arg-type]
        return [tokenizer.decode(ids) for ids in prompts]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer"]
    content: StrictStr | list[ContentPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise RequestError(f"content parts of type {part.type[:40]!r} are not supported (text only)",
                                   "messages", "unsupported_content")
        return "".join(p.text or "" for p in self.content)


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=1024)]
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None

    prompt_field: ClassVar[str] = "messages"

    def refused(self) -> None:
        super().refused()
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")

    def token_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def chat(self) -> list[dict[str, str]]:
        """Messages as the chat template expects them ("developer" is a system message)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

    def prompt_list(self, tokenizer: Any, window: int, max_token_bytes: int) -> list[list[int]]:
        if tokenizer.chat_template is None:
            raise RequestError("this model has no chat template; use /v1/completions", "messages")
        text = tokenizer.apply_chat_template(self.chat(), tokenize=False, add_generation_prompt=True)
        return [_encode(tokenizer, text, window, max_token_bytes, "messages")]


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
    logprobs: dict[str, Any] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: dict[str, str]
    """The new text (``{"content": ...}``); the first chunk carries the role, the last may be empty."""
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


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


# --- logprobs in OpenAI's two shapes ---------------------------------------------------------------

Entry = tuple[int, "float | None", "list[tuple[int, float]] | None"]
"""A token id, its log-probability (None: the first prompt token) and the best alternatives."""


@cache
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-ins (GPT-2's table) back to the bytes they stand for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    extra = 0
    table = {}
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class TokenText:
    """Each token's bytes and its text as OpenAI shows it (cached per id)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token: int) -> tuple[str, bytes]:
        hit = self._cache.get(token)
        if hit is None:
            piece = self.tokenizer.convert_ids_to_tokens(token)
            table = _byte_decoder()
            if isinstance(piece, str) and piece and all(c in table for c in piece):
                raw = bytes(table[c] for c in piece)
            else:
                raw = self.tokenizer.decode([token]).encode()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # part of a character: OpenAI's "bytes:" form
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            hit = self._cache[token] = (text, raw)
        return hit


def completion_logprobs(text_of: TokenText, entries: list[Entry], offset: int = 0) -> dict[str, Any]:
    """The /v1/completions ``logprobs`` object; ``offset``: where the first token's text begins."""
    tokens, lps, tops, offsets = [], [], [], []
    raw = b""
    for token, lp, top in entries:
        text, piece = text_of(token)
        offsets.append(offset + len(raw.decode("utf-8", "ignore")))
        raw += piece
        tokens.append(text)
        lps.append(lp)
        tops.append(None if top is None else {text_of(t)[0]: v for t, v in top})
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(text_of: TokenText, entries: list[Entry]) -> dict[str, Any]:
    """The /v1/chat/completions ``logprobs`` object (``content``: one item per generated token)."""
    def item(token: int, lp: float | None) -> dict[str, Any]:
        text, raw = text_of(token)
        return {"token": text, "logprob": lp, "bytes": list(raw)}

    return {"content": [{**item(t, lp), "top_logprobs": [item(a, v) for a, v in top or []]}
                        for t, lp, top in entries], "refusal": None}
