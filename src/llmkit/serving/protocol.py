"""OpenAI-compatible request models: validated strictly, converted to engine parameters.

Unknown fields are accepted (clients send many) and logged; known fields are checked for type
and range, and ``None`` always means "the server default" (never ``x or default``: a
temperature of 0 is legitimate).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from llmkit.config.schema import GenerateConfig
from llmkit.errors import UsageError
from llmkit.generate.constrain import GrammarError, check_grammar, json_schema_grammar
from llmkit.generate.sampling import SamplingParams
from llmkit.serving.toolcalls.base import parser_for
from llmkit.serving.toolcalls.use import ToolUse

MAX_N = 8
MAX_STOP = 4
MAX_PROMPTS = 32  # prompts in one /v1/completions request
MAX_CHOICES = 64  # prompts x n: sequences one request may add to the batch
MAX_LOGIT_BIAS = 1024

Finite = Annotated[float, Field(allow_inf_nan=False)]

# Known OpenAI fields llmkit does not implement, with the values that ask for nothing (accepted);
# any other value is a 400 naming the field. Chat completions declare tools, tool_choice,
# parallel_tool_calls and response_format as fields of their own, so these entries apply to
# /v1/completions there.
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
_WHY_COMPLETIONS = {"tools": "tool calling on /v1/completions (use /v1/chat/completions)",
                    "tool_choice": "tool calling on /v1/completions (use /v1/chat/completions)",
                    "parallel_tool_calls": "tool calling on /v1/completions (use /v1/chat/completions)",
                    "response_format": "structured output on /v1/completions (use /v1/chat/completions)"}


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
    tools: ToolUse | None = None
    """How the answers' tool calls are read (None: no tools, or tool_choice none)."""


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
                why = _WHY_COMPLETIONS.get(name, _WHY[name]) if isinstance(self, CompletionRequest) else _WHY[name]
                raise RequestError(f"{name}: {why} is not supported by this server", name, "unsupported_field")

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
                           bias: tuple[tuple[int, float], ...] = (), grammar: str | None = None,
                           adapter: int = 0) -> SamplingParams:
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
            logprobs=self.token_logprobs(), prompt_logprobs=self.prompt_logprobs(), grammar=grammar, adapter=adapter)

    def prompt_list(self, tokenizer: Any, window: int, max_token_bytes: int) -> list[list[int]]:
        """The prompts as token ids (each request kind renders its own)."""
        raise NotImplementedError

    def echo_texts(self, tokenizer: Any, prompts: list[list[int]]) -> list[str] | None:
        return None

    def constraint(self, tokenizer: Any, tool_parser: str = "auto") -> tuple[str | None, ToolUse | None]:
        """The grammar every choice decodes under (None: free) and how tool calls are read
        (``tool_parser``: serve.tool_parser)."""
        return None, None

    def allows_zero_tokens(self) -> bool:
        return False

    def to_engine_request(self, tokenizer: Any, defaults: GenerateConfig, window: int,
                          max_token_bytes: int, tool_parser: str = "auto", adapter: int = 0) -> EngineRequest:
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
        grammar, tools = self.constraint(tokenizer, tool_parser)
        try:
            params = [self.to_sampling_params(defaults, window - len(ids), i, bias, grammar, adapter)
                      for ids in prompts for i in range(self.n)]
        except UsageError as exc:
            raise RequestError(exc.detail or exc.summary) from None
        include_usage = bool(self.stream and self.stream_options and self.stream_options.include_usage)
        return EngineRequest([ids for ids in prompts for _ in range(self.n)], params, self.stream, include_usage,
                             self.n, sum(map(len, prompts)), self.echo_texts(tokenizer, prompts),
                             self.token_logprobs() is not None, tools)

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


class MessageFunction(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: StrictStr = Field(max_length=256)
    arguments: StrictStr = Field(max_length=1_000_000)


class MessageToolCall(BaseModel):
    """A call an earlier assistant turn made (sent back with the conversation)."""

    model_config = ConfigDict(extra="allow")
    id: StrictStr | None = Field(None, max_length=256)
    type: Literal["function"] = "function"
    function: MessageFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: StrictStr | list[ContentPart] | None = None
    tool_calls: Annotated[list[MessageToolCall], Field(max_length=128)] | None = None
    tool_call_id: StrictStr | None = Field(None, max_length=256)

    def text(self) -> str:
        if self.content is None:
            if self.role == "assistant" and self.tool_calls:
                return ""
            raise RequestError(f"a {self.role} message needs content", "messages")
        if isinstance(self.content, str):
            return self.content
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise RequestError(f"content parts of type {part.type[:40]!r} are not supported (text only)",
                                   "messages", "unsupported_content")
        return "".join(p.text or "" for p in self.content)

    def rendered(self) -> dict[str, Any]:
        """The message as chat templates take it: "developer" is a system message; a call's
        arguments are an object (Hugging Face's convention), not JSON text."""
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                                 for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


def _arguments(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise RequestError("a tool call's arguments in messages are not valid JSON", "messages") from None
    if not isinstance(value, dict):
        raise RequestError("a tool call's arguments in messages must be a JSON object", "messages")
    return value


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    description: StrictStr | None = Field(None, max_length=100_000)
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ToolDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    name: StrictStr = Field(max_length=256)


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: StrictStr = Field("response", max_length=256)
    description: StrictStr | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=1024)]
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    tools: Annotated[list[ToolDef], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool = True
    response_format: ResponseFormat | None = None

    prompt_field: ClassVar[str] = "messages"

    def refused(self) -> None:
        super().refused()
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise RequestError("tool_choice needs tools", "tool_choice")
        if self.response_format is not None and self.response_format.type == "json_schema" and (
                self.response_format.json_schema is None or self.response_format.json_schema.json_schema is None):
            raise RequestError("response_format json_schema needs json_schema.schema", "response_format")
        structured = self.response_format is not None and self.response_format.type != "text"
        if structured and self.tools and self.tool_choice != "none":
            raise RequestError("response_format and tools together: the answer is either JSON or a tool call "
                               "(send tool_choice: none, or leave one of them out)", "response_format")
        if structured and self.ignore_eos:
            raise RequestError("ignore_eos cannot be combined with response_format", "ignore_eos")

    def token_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def chat(self) -> list[dict[str, Any]]:
        """Messages as the chat template expects them."""
        return [m.rendered() for m in self.messages]

    def tool_list(self) -> list[dict[str, Any]] | None:
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None

    def prompt_list(self, tokenizer: Any, window: int, max_token_bytes: int) -> list[list[int]]:
        if tokenizer.chat_template is None:
            raise RequestError("this model has no chat template; use /v1/completions", "messages")
        if self.tools and "tools" not in tokenizer.chat_template:
            raise RequestError("this model's chat template has no tool support (it never writes the tools "
                               "into the prompt); send the request without tools", "tools")
        text = tokenizer.apply_chat_template(self.chat(), tools=self.tool_list(), tokenize=False,
                                             add_generation_prompt=True)
        return [_encode(tokenizer, text, window, max_token_bytes, "messages")]

    def constraint(self, tokenizer: Any, tool_parser: str = "auto") -> tuple[str | None, ToolUse | None]:
        if self.tools:
            return self._tool_constraint(tokenizer, tool_parser)
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None, None
        schema = fmt.json_schema.json_schema if fmt.type == "json_schema" and fmt.json_schema else None
        return _compiled(json_schema_grammar, schema, tokenizer, "response_format"), None

    def _tool_constraint(self, tokenizer: Any, tool_parser: str) -> tuple[str | None, ToolUse | None]:
        tools = self.tool_list() or []
        for i, tool in enumerate(tools):
            _compiled(json_schema_grammar, tool["function"].get("parameters"), tokenizer,
                      f"tools[{i}].function.parameters")
        if self.tool_choice == "none":
            return None, None
        parser = parser_for(tokenizer.chat_template, tool_parser)
        if parser is None:
            raise RequestError("tool calls in this model's chat template are in no format llmkit reads "
                               "(hermes, llama3_json, mistral); start the server with --tool-parser", "tools")
        names = frozenset(t["function"]["name"] for t in tools)
        if isinstance(self.tool_choice, NamedToolChoice):
            wanted = self.tool_choice.function.name
            if wanted not in names:
                raise RequestError(f"tool_choice names {wanted[:64]!r}, which is not in tools", "tool_choice")
            tools = [t for t in tools if t["function"]["name"] == wanted]
        if self.tool_choice in (None, "auto"):
            return None, ToolUse(parser, names, "auto", self.parallel_tool_calls)
        parallel = self.parallel_tool_calls and not isinstance(self.tool_choice, NamedToolChoice)
        grammar = _compiled(lambda _: parser.grammar(tools, parallel, tokenizer), None, tokenizer, "tools")
        return grammar, ToolUse(parser, names, "required", parallel)


def _compiled(make: Any, schema: Any, tokenizer: Any, param: str) -> str:
    """A grammar made by ``make(schema)`` and checked against the tokenizer: a RequestError naming
    ``param`` and the part that failed when the engine cannot compile it."""
    if schema is not None and not isinstance(schema, dict):
        raise RequestError(f"{param} must be a JSON schema object", param)
    try:
        grammar = make(schema)
        check_grammar(grammar, tokenizer)
    except GrammarError as exc:
        raise RequestError(f"{param} is not a JSON schema llmkit can decode under: {str(exc)[:500]}", param,
                           "invalid_schema") from None
    return grammar


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
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: dict[str, Any]
    """The new text (``{"content": ...}``) or calls (``{"tool_calls": [...]}``); the first chunk
    carries the role, the last may be empty."""
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
