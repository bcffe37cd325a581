"""`final/`: the trained model as a plain Hugging Face directory (LoRA merged, adapter beside it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmkit.config.schema import RunConfig
from llmkit.data.tokenizer import end_token_ids, portable_tokenizer_config
from llmkit.fsutil import staged_dir
from llmkit.rundir import RunDir


def write_final(cfg: RunConfig, run: RunDir, model: Any, log: Any) -> Path:
    """Write run/final atomically: config, safetensors, tokenizer, generation_config."""
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from llmkit.privacy import crypto

    out = run.final
    with staged_dir(out) as staged, crypto.writable_dir(staged) as tmp:  # sealed file by file with a key
        if cfg.model.lora.enabled:
            model.save_pretrained(str(tmp / "adapter"))  # the standard PEFT adapter directory
            model = model.merge_and_unload()
        model.config.use_cache = True
        model.save_pretrained(str(tmp), safe_serialization=True)
        for f in run.tokenizer.iterdir():
            if f.is_file():
                (tmp / f.name).write_bytes(crypto.read_bytes(f))  # plain here (tmp is in memory when sealing)
        portable_tokenizer_config(tmp)  # runs prepared before the portable form get it here
        g = cfg.generate
        eos = model.config.eos_token_id
        ends = end_token_ids(tmp, eos)  # every token that ends a turn: transformers and vLLM stop at each
        gen = GenerationConfig(eos_token_id=ends if len(ends) > 1 else eos, pad_token_id=model.config.pad_token_id,
                               bos_token_id=eos,
                               max_new_tokens=g.max_new_tokens, do_sample=g.temperature > 0,
                               temperature=g.temperature if g.temperature > 0 else None,
                               top_p=g.top_p if g.temperature > 0 else None,
                               top_k=g.top_k if g.temperature > 0 else None,
                               repetition_penalty=g.repetition_penalty)
        gen.save_pretrained(str(tmp))
        (tmp / "llmkit.json").write_text(json.dumps({"run": cfg.name, "task": cfg.train.task}, indent=2) + "\n")
    log(f"final model written to {out}")
    return out
