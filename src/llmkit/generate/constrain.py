"""Constrained decoding: a row's tokens kept inside a grammar (a JSON schema, a tool call).

The grammar engine is llguidance (``pip install 'llmkit[serve]'``): it compiles a JSON schema or
a Lark grammar against the tokenizer's own vocabulary and, at each step, says which tokens may
come next as a bitmask; it needs no precomputation per schema (a new schema per request costs
milliseconds), covers JSON Schema's ``pattern``, ``format``, bounds on strings, arrays and numbers,
``$ref``/``$defs`` and ``anyOf``, and builds from a wheel with no dependency.

In a batch, only the rows that carry a grammar are masked: :func:`mask_logits` sets the logits of
every token its grammar forbids to -inf before sampling, so greedy, sampled, penalised and biased
rows all pick among allowed tokens. Once the grammar is complete only end-of-turn tokens are
allowed, so the row stops. A row whose grammar fails (its matcher enters an error state) ends
alone with an error; the other rows of the batch go on.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

from llmkit.optional import require

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""How constrained JSON is written: Python's ``json.dumps`` separators, no free whitespace (a
model cannot run on in blanks, and the output looks like the JSON a model was trained on)."""


class GrammarError(ValueError):
    """A grammar the engine cannot compile; the message names the part that failed."""


def _engine() -> Any:
    return require("llguidance", "serve", "structured outputs and tool calling")


_TOKENIZERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def engine_tokenizer(tokenizer: Any) -> Any:
    """llguidance's view of a Hugging Face fast tokenizer (built once per tokenizer, then cached);
    its end tokens are the tokens that end a turn, so a complete grammar lets the row stop."""
    from llmkit.data.tokenizer import turn_end_ids

    with _LOCK:
        hit = _TOKENIZERS.get(tokenizer)
        if hit is None:
            _engine()
            import llguidance.hf

            hit = _TOKENIZERS[tokenizer] = llguidance.hf.from_tokenizer(tokenizer, eos_token=sorted(turn_end_ids(tokenizer)))
        return hit


def json_schema_grammar(schema: dict[str, Any] | None) -> str:
    """The grammar of JSON text matching ``schema`` (None: any JSON object, OpenAI's JSON mode)."""
    llg = _engine()
    try:
        return llg.LLMatcher.grammar_from_json_schema(schema if schema is not None else {"type": "object"},
                                                      overrides=JSON_STYLE)
    except (ValueError, TypeError) as exc:
        raise GrammarError(f"the schema is not a JSON object: {exc}") from None


def lark_grammar(lark: str) -> str:
    """A grammar in llguidance's Lark dialect (``%json {schema}`` embeds a JSON schema)."""
    return _engine().LLMatcher.grammar_from_lark(lark)


def lark_json(schema: dict[str, Any]) -> str:
    """``schema`` as a ``%json`` rule body of a Lark grammar, written in :data:`JSON_STYLE`."""
    return "%json " + json.dumps({"x-guidance": JSON_STYLE, **schema})


def check_grammar(grammar: str, tokenizer: Any) -> None:
    """Raise GrammarError (the engine's message: it names the part) unless ``grammar`` compiles."""
    failed, messages = _engine().LLMatcher.validate_grammar_with_warnings(grammar, engine_tokenizer(tokenizer))
    if failed:
        raise GrammarError(messages[0] if messages else "the grammar does not compile")


class Constraint:
    """One row's place in its grammar: which tokens may come next, and the tokens taken so far."""

    def __init__(self, grammar: str, tokenizer: Any):
        llg = _engine()
        self.matcher = llg.LLMatcher(engine_tokenizer(tokenizer), grammar, log_level=0)
        if self.matcher.is_error():
            raise GrammarError(self.matcher.get_error())

    def fill(self, bitmask: Any, row: int) -> None:
        """Write the allowed next tokens into row ``row`` of an int32 (rows, ceil(V/32)) bitmask."""
        if self.matcher.is_error():
            raise GrammarError(self.matcher.get_error())
        view = bitmask[row]
        self.matcher.unsafe_compute_mask_ptr(view.data_ptr(), view.numel() * view.element_size())

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise GrammarError(f"the grammar refused token {token}: {self.matcher.get_error()}"[:300])


def allowed_tokens(bitmask: Any, vocab: int) -> Any:
    """(rows, vocab) bool from an int32 bitmask (bit ``i % 32`` of word ``i // 32`` is token i);
    tokens past the engine's vocabulary (a model head larger than the tokenizer) are not allowed."""
    import torch

    bits = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    allowed = ((bitmask.unsqueeze(-1) >> bits) & 1).bool().flatten(1)
    if allowed.size(1) >= vocab:
        return allowed[:, :vocab]
    return torch.cat([allowed, allowed.new_zeros(allowed.size(0), vocab - allowed.size(1))], 1)


def mask_logits(logits: Any, constraints: list[Constraint | None]) -> tuple[Any, dict[int, str]]:
    """``logits`` (B, V) with the tokens each constrained row may not take set to -inf, and the rows
    whose grammar failed (with why): those rows are left unmasked and must end."""
    import torch

    rows = [i for i, c in enumerate(constraints) if c is not None]
    if not rows:
        return logits, {}
    words = (logits.size(1) + 31) // 32
    bitmask = torch.full((len(rows), words), -1, dtype=torch.int32)
    failed: dict[int, str] = {}
    for k, i in enumerate(rows):
        try:
            constraints[i].fill(bitmask, k)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - this row's grammar alone
            failed[i] = f"{type(exc).__name__}: {exc}"[:300]
    allowed = allowed_tokens(bitmask.to(logits.device), logits.size(1))
    keep = [k for k, i in enumerate(rows) if i not in failed]
    if keep:
        index = torch.tensor([rows[k] for k in keep], device=logits.device)
        logits = logits.clone()
        logits[index] = logits[index].masked_fill(~allowed[keep], float("-inf"))
    return logits, failed
