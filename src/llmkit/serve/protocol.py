"""OpenAI-compatible request models: validated strictly, converted to engine parameters.

Unknown fields are accepted (clients send many) and logged; known fields are checked for type
and range, and ``None`` always means "the server default" (never ``x or default``: a
temperature of 0 is legitimate).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from llmkit.config.schema import GenerateConfig
from llmkit.generate.sampling import SamplingParams

MAX_N = 8
MAX_STOP = 4

Finite = Annotated[float, Field(allow_inf_nan=False)]


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
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        seed = self.seed + index if self.seed is not None else None
        return SamplingParams(
            max_new_tokens=max(1, min(wanted if wanted is not None else defaults.max_new_tokens, room)),
            temperature=self.temperature if self.temperature is not None else defaults.temperature,
            top_p=self.top_p if self.top_p is not None else defaults.top_p,
            top_k=self.top_k if self.top_k not in (None, -1, 0) else defaults.top_k,
            repetition_penalty=(self.repetition_penalty if self.repetition_penalty is not None
                                else defaults.repetition_penalty),
            stop=tuple(stops) if self.stop is not None else tuple(defaults.stop),
            seed=seed if seed is not None else defaults.seed,
            ignore_eos=self.ignore_eos,
        )


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: StrictStr | Annotated[list[StrictInt], Field(min_length=1)]
    echo: StrictBool = False
    logprobs: StrictInt | None = None


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

    def chat(self) -> list[dict[str, str]]:
        """Messages as the chat template expects them ("developer" is a system message)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error object; the message is cut so no body exceeds a few KB."""
    return {"error": {"message": message[:2000], "type": kind, "param": param, "code": code}}
