"""The Ollama Modelfile carries llmkit's chat template as a Go template: with tool calls for
tokenizers with the current template, the plain one for tokenizers trained before it."""

from __future__ import annotations

import re
from pathlib import Path

from llmkit.data.tokenizer import CHAT_TEMPLATE, PLAIN_CHAT_TEMPLATE
from llmkit.exporting.gguf import OLLAMA_CHATML, OLLAMA_CHATML_TOOLS, modelfile


def _balanced(template: str) -> bool:
    """Every if/range has its end (Go's text/template actions, as Ollama parses them)."""
    depth = 0
    for action in re.findall(r"{{-?\s*(.*?)\s*-?}}", template):
        word = action.split(" ")[0]
        if word in ("if", "range", "with"):
            depth += 1
        elif word == "end":
            depth -= 1
        if depth < 0:
            return False
    return depth == 0


def test_the_modelfile_template_follows_the_tokenizers() -> None:
    new = modelfile(Path("m.gguf"), CHAT_TEMPLATE, ["<|im_end|>"], 256, None)
    old = modelfile(Path("m.gguf"), PLAIN_CHAT_TEMPLATE, ["<|im_end|>"], 256, None)
    assert f'TEMPLATE """{OLLAMA_CHATML_TOOLS}"""' in new and f'TEMPLATE """{OLLAMA_CHATML}"""' in old
    assert "custom chat template" in modelfile(Path("m.gguf"), "{{ x }}", [], 256, None)


def test_the_tool_template_is_well_formed_and_writes_the_same_convention() -> None:
    assert _balanced(OLLAMA_CHATML_TOOLS) and _balanced(OLLAMA_CHATML)
    for piece in ("<tools>", "</tools>", "<tool_call>\n{\"name\": ", "<tool_response>\n", "<|im_start|>tool\n",
                  "<|im_start|>assistant\n"):
        assert piece in OLLAMA_CHATML_TOOLS and piece in CHAT_TEMPLATE.replace("\\n", "\n")
