"""``privacy.offline``: a run that sends nothing anywhere.

The config refuses what would send data out (a non-loopback serve bind, checkpoints to a bucket);
``apply`` sets, for this process and what it starts, the switches that keep the Hugging Face
libraries and common trackers from reaching the network. llmkit itself loads models, tokenizers
and data only from local paths.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",  # huggingface_hub: no downloads, no metadata requests
    "HF_DATASETS_OFFLINE": "1",  # datasets (lm-eval tasks): local files and caches only
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DO_NOT_TRACK": "1",  # the common opt-out of telemetry
    "WANDB_MODE": "disabled",
    "SKYPILOT_DISABLE_USAGE_COLLECTION": "1",
}


def apply(offline: bool, environ: MutableMapping[str, str] = os.environ) -> None:
    """Set OFFLINE_ENV when ``offline`` (values already there that are stricter are kept)."""
    if offline:
        environ.update(OFFLINE_ENV)


def missing(environ: MutableMapping[str, str] | os._Environ[str] = os.environ) -> list[str]:
    """The OFFLINE_ENV switches this environment lacks."""
    return [k for k, v in OFFLINE_ENV.items() if environ.get(k) != v]
