"""The one run config: every section a stage reads, validated once at the edge.

Each field's docstring is its documentation: the CLI help, `llmkit init`'s comments and the
reference docs are generated from it. Units are in the names (``_s``, ``_tokens``, ``_bytes``).
Secrets are never values here: fields ending in ``_env`` hold the *name* of an environment
variable that holds the secret.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Token formats that are values, not names: Hugging Face, GitHub, Slack, AWS access keys.
_SECRET_VALUE = re.compile(r"^(hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|xox[abprs]_[A-Za-z0-9_]+|AKIA[A-Z0-9]{16})$")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

LORA_LINEAR_MODULES = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}
"""The linear projections of each architecture's blocks, by the module names peft matches."""

def _check_env_name(value: str | None) -> str | None:
    """Accept an environment variable *name*; refuse anything that looks like a secret value."""
    if value is None:
        return value
    if not _ENV_NAME.match(value):
        raise ValueError(
            "must be the name of an environment variable (letters, digits, '_'), not a secret "
            "value; put the secret in the environment and give its name here"
        )
    return value


class Section(BaseModel):
    """Shared settings of every config section: unknown keys are errors, docstrings are docs."""

    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
        validate_default=True,
    )


class LoraConfig(Section):
    """Low-rank adapters (peft) trained on top of a frozen base model."""

    enabled: bool = False
    """Train LoRA adapters instead of all weights."""
    r: int = Field(8, gt=0, le=1024)
    """Rank of each adapter matrix."""
    alpha: float = Field(16.0, gt=0)
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter input."""
    target_modules: list[str] | None = None
    """Module names to adapt (e.g. q_proj v_proj, or Phi-3's qkv_proj gate_up_proj); null adapts
    every linear projection of the model's blocks, found in the loaded model itself (not the
    output head or a classifier head)."""
    base_bits: Literal[4, 8, 16, 32] = 32
    """Precision of the frozen base weights: 32 fp32; 16 bf16 (fp16 on a GPU without bf16);
    8 LLM.int8; 4 NF4 with double quantization and bf16 compute (QLoRA). 8 and 4 quantize the
    base's linear projections with bitsandbytes (`pip install 'llmkit[qlora]'`; its CUDA backend
    on GPUs, its CPU backend on CPUs) and keep the rest of the base in bf16. The adapters and their AdamW state stay fp32, and final/
    is the adapters merged into the base dequantized to fp32."""
    dora: bool = False
    """Weight-decomposed LoRA (DoRA, peft's use_dora): a trained magnitude per output feature on
    top of the low-rank direction update."""


class ModelConfig(Section):
    """The network: an architecture built from these numbers, or a pretrained Hugging Face model."""

    architecture: Literal["llama", "gpt2"] = "llama"
    """Hugging Face model_type to build: llama (RoPE, RMSNorm, SwiGLU, GQA) or gpt2."""
    from_pretrained: str | None = None
    """Pretrained model to start from (full fine-tune or LoRA): a local Hugging Face model directory
    or a Hub id `org/name` (optionally `@revision`), downloaded into the Hugging Face cache
    (safetensors only; HF_HUB_OFFLINE=1 uses the cache alone); null builds from scratch."""
    allow_pickle_weights: bool = False
    """Load a pretrained model that has only .bin (pickle) weights, with torch.load(weights_only=True).
    Off: such a model is refused (unpickling can run code)."""
    trust_remote_code: bool = False
    """Allow a model directory's own Python code (auto_map) to run. Off: such a model is refused."""
    vocab_size: int | None = Field(None, gt=0, le=1_048_576)
    """Embedding rows; null takes the tokenizer's vocabulary size."""
    hidden_size: int = Field(192, gt=0)
    """Width of the residual stream."""
    num_hidden_layers: int = Field(4, gt=0, le=1024)
    """Number of transformer blocks."""
    num_attention_heads: int = Field(6, gt=0)
    """Query heads per attention layer."""
    num_key_value_heads: int | None = Field(None, gt=0)
    """Key/value heads (grouped-query attention); null means as many as the query heads."""
    intermediate_size: int | None = Field(None, gt=0)
    """MLP width; null derives it (4x hidden for gpt2, 8/3x hidden rounded to 64 for llama)."""
    max_position_embeddings: int = Field(256, gt=0)
    """Longest sequence the model can attend over."""
    tie_word_embeddings: bool = True
    """Share the input embedding with the output head."""
    rope_theta: float = Field(10_000.0, gt=0)
    """RoPE base frequency (llama only)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout probability in attention and MLP during training."""
    num_labels: int | None = Field(None, ge=2)
    """Classes of the classification head (train.task = classify); null reads them from the data."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    """Low-rank adapters."""

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}; pick a head count that divides it"
            )
        kv = self.num_key_value_heads
        if kv is not None and self.num_attention_heads % kv:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_key_value_heads {kv}"
            )
        if kv is not None and self.architecture == "gpt2" and kv != self.num_attention_heads:
            raise ValueError("gpt2 has no grouped-query attention: leave num_key_value_heads null")
        return self

    @model_validator(mode="after")
    def _lora_has_a_base(self) -> ModelConfig:
        if self.lora.enabled and self.from_pretrained is None:
            raise ValueError(
                "lora.enabled trains adapters on a frozen base model, but from_pretrained is null (the "
                "base would be random weights); set from_pretrained to a local Hugging Face model "
                "directory (e.g. a finished run's final/), or set lora.enabled: false to train all weights"
            )
        return self


class TokenizerConfig(Section):
    """How text becomes tokens: train a byte-level BPE here, or load an existing one."""

    kind: Literal["bpe", "pretrained"] = "bpe"
    """bpe: train a byte-level BPE on the corpus; pretrained: load the tokenizer from `path`."""
    path: str | None = None
    """kind = pretrained: a local tokenizer or model directory, or a Hub id `org/name[@revision]`;
    null takes model.from_pretrained's tokenizer."""
    vocab_size: int = Field(4096, ge=256, le=1_048_576)
    """Vocabulary size of a trained BPE, special tokens included."""
    min_frequency: int = Field(2, ge=1)
    """A pair must occur this often to be merged."""
    eos_token: str = "<|endoftext|>"
    """End-of-text token, also the document separator in token shards."""
    chat_template: str | None = None
    """Jinja chat template stored with the tokenizer; null uses llmkit's ChatML-style template."""



SFT_FIELDS = ("prompt", "completion", "instruction", "input", "output", "messages", "conversations", "system", "tools")
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected", "completion", "label", "system")


class MixSource(Section):
    """One source of a pretraining mixture (data.mix): where its documents come from, and its weight."""

    source: Literal["embedded", "text", "dir", "jsonl", "hf"] = "embedded"
    """As data.source."""
    path: str | None = None
    """As data.path."""
    glob: str = "**/*.txt"
    """As data.glob."""
    text_field: str = "text"
    """As data.text_field."""
    split: str = "train"
    """As data.split."""
    hf_name: str | None = None
    """As data.hf_name."""
    weight: float = Field(1.0, gt=0)
    """Relative share of the mixture's documents drawn from this source."""

    @model_validator(mode="after")
    def _path(self) -> MixSource:
        if self.source != "embedded" and not self.path:
            raise ValueError(f"source '{self.source}' needs `path`")
        return self


class DataConfig(Section):
    """Where the text comes from and how it is split and shaped."""

    source: Literal["embedded", "text", "dir", "jsonl", "hf"] = "embedded"
    """embedded: Python's own documentation text (no download); text: one file; dir: a folder of
    files matched by `glob`; jsonl: one JSON object a line; hf: through the `datasets` library
    (a parquet, arrow, CSV or JSON file, a dataset directory, or a Hub dataset id org/name)."""
    path: str | None = None
    """File or directory for the text, dir, jsonl and hf sources (hf: also a Hub dataset id)."""
    glob: str = "**/*.txt"
    """Files to read under `path` (source = dir)."""
    text_field: str = "text"
    """Field that holds the text (sources jsonl and hf, pretraining)."""
    split: str = "train"
    """Split read through `datasets` (source hf, and SFT data that is not a .jsonl file)."""
    hf_name: str | None = None
    """Configuration name of a Hub dataset (the second argument of datasets.load_dataset)."""
    streaming: bool | Literal["auto"] = "auto"
    """Stream a dataset instead of downloading it whole first; auto streams Hub datasets and reads
    local files directly."""
    mix: list[MixSource] = Field(default_factory=list)
    """Pretraining from several sources: documents drawn from each with probability proportional to
    its weight (seeded, deterministic) until one runs out; the shares drawn are in data/meta.json.
    When set, data.source and data.path are not used."""
    include_stdlib_source: bool = False
    """Embedded source: add the Python standard library's .py files to the corpus."""
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    """Share of documents held out for validation (split by document, deterministic)."""
    fast_bpe: bool = True
    """Pretraining shards: encode with tiktoken's engine when it gives exactly the tokenizer's ids
    (checked on the corpus's first MiB; 3-4x faster); false: always Hugging Face tokenizers."""
    invalid_utf8: Literal["error", "replace"] = "replace"
    """Bytes that are not UTF-8: stop with the file and offset, or replace them with U+FFFD."""
    sft_path: str | None = None
    """Supervised examples for task sft: a .jsonl file, or through `datasets` a parquet/arrow/CSV/JSON
    file, a dataset directory or a Hub dataset id. Shapes: prompt/completion, alpaca, chat messages
    (with an optional system prompt) or ShareGPT conversations; the shape is detected from the
    first example and printed, and every example must have it."""
    embedded_sft: Literal["tools", "questions"] | None = None
    """SFT data made from the embedded documentation when data.sft_path is null (source embedded).
    tools: tool-use conversations (a `lookup(topic)` function over the documentation's topics: the
    question, the call, its result, the answer) in several phrasings, plus a few greetings answered
    without the tool; shuffled with train.seed. questions: each topic asked in 8 varied phrasings and
    answered with its opening paragraph (the quickstart's chat data); validation is its own split
    (topics never trained on, and trained topics in phrasings never trained on), not
    data.val_fraction's."""
    sft_fields: dict[str, str] = Field(default_factory=dict)
    """Rename the dataset's keys to llmkit's: {prompt: question, completion: answer} reads `question`
    as the prompt. Keys: prompt, completion, instruction, input, output, messages, conversations, system."""
    sft_packing: bool = False
    """SFT: pack several examples into one context window instead of padding each."""
    classify_path: str | None = None
    """JSONL or CSV with `text` and `label` for task classify."""
    preference_path: str | None = None
    """Preference data for task preference: a .jsonl file, or through `datasets` a parquet/arrow/CSV/JSON
    file, a dataset directory or a Hub dataset id. Pairs {prompt, chosen, rejected} (each a string or a
    list of chat messages; without a prompt, chosen and rejected are whole conversations whose shared
    start is the prompt), or KTO's unpaired {prompt, completion, label: true/false}. Null with
    data.source embedded: pairs generated from the embedded documentation."""
    preference_fields: dict[str, str] = Field(default_factory=dict)
    """Rename the dataset's keys to llmkit's, as sft_fields does: {prompt: question, chosen: better,
    rejected: worse}. Keys: prompt, chosen, rejected, completion, label, system."""
    prompts_path: str | None = None
    """Prompts for task rl: a .jsonl file, or through `datasets` a parquet/arrow/CSV/JSON file, a dataset
    directory or a Hub dataset id. Each example has `prompt` (a string, or a list of chat messages) or
    `messages` (chat messages ending with a user turn), plus any fields its rewards read (`answer`,
    `asserts`); optional `system`. Null with source embedded: questions about the embedded
    documentation's statements, each with the statement's name as `answer`."""

    @model_validator(mode="after")
    def _path_for_source(self) -> DataConfig:
        if self.source != "embedded" and not self.path and not self.mix:
            raise ValueError(f"source '{self.source}' needs `path`")
        if self.embedded_sft is not None and (self.source != "embedded" or self.sft_path):
            raise ValueError("embedded_sft makes SFT data from the embedded documentation: it needs source: embedded "
                             "and no sft_path")
        unknown = sorted(set(self.sft_fields) - set(SFT_FIELDS))
        if unknown:
            raise ValueError(f"sft_fields: unknown key(s) {', '.join(unknown)}; llmkit's names are {', '.join(SFT_FIELDS)}")
        unknown = sorted(set(self.preference_fields) - set(PREFERENCE_FIELDS))
        if unknown:
            raise ValueError(f"preference_fields: unknown key(s) {', '.join(unknown)}; llmkit's names are "
                             f"{', '.join(PREFERENCE_FIELDS)}")
        return self


class PreferenceConfig(Section):
    """Preference tuning (train.task preference): which loss, and how the reference model is had."""

    loss: Literal["dpo", "ipo", "simpo", "orpo", "kto"] = "dpo"
    """dpo: -log sigmoid(beta x the chosen-minus-rejected log-ratio to the reference); ipo: its squared
    form on per-token log-ratios; simpo: length-normalised log-likelihoods and a margin, no reference;
    orpo: SFT loss on the chosen answer plus a weighted odds-ratio term, no reference; kto: unpaired
    desirable/undesirable answers against a batch KL estimate."""
    beta: float = Field(0.1, gt=0)
    """Strength of the preference against the reference (dpo, ipo: its tau; simpo; kto). ORPO uses
    orpo_alpha instead."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """dpo and simpo: the assumed share of flipped labels (conservative DPO, cDPO); 0: none."""
    simpo_gamma: float = Field(0.5, ge=0)
    """simpo: the target reward margin gamma."""
    sft_weight: float = Field(0.0, ge=0)
    """dpo, ipo, simpo: add this times the chosen answers' SFT loss (their mean token NLL), which keeps
    the chosen answers' likelihood from falling with the rejected ones (RPO; TRL's DPO loss type sft,
    CPO's cpo_alpha). 0: the pure loss. ORPO always has it (weight 1)."""
    orpo_alpha: float = Field(0.1, gt=0)
    """orpo: weight of the odds-ratio term beside the chosen answer's SFT loss (the paper's lambda)."""
    kto_desirable_weight: float = Field(1.0, gt=0)
    """kto: weight of desirable (label true) answers' losses."""
    kto_undesirable_weight: float = Field(1.0, gt=0)
    """kto: weight of undesirable (label false) answers' losses."""
    precompute_reference: bool | Literal["auto"] = "auto"
    """How the reference model's log-probabilities are had (dpo, ipo, kto). true: computed once before
    step 1 over the training and validation data and stored in the run (reference/), no reference
    pass per step. false: a reference forward per step: for LoRA the same model with its adapters
    disabled (no second copy), for full fine-tuning a frozen copy. auto: LoRA as false; full
    fine-tuning as false when the frozen copy fits the device by the memory plan, else true."""


REWARD_OPTIONS = {  # the options of each built-in reward (a user function takes none)
    "exact_match": {"pattern"},
    "regex": {"pattern"},
    "contains": set(),
    "length": {"min_tokens", "max_tokens"},
    "python_asserts": {"timeout_s", "memory_mb", "allow_unsandboxed"},
}


class RewardConfig(Section):
    """One reward of an RL run: a built-in by name, or `module:function` from train.rl.reward_files."""

    function: str = Field(min_length=1)
    """A built-in (exact_match, regex, contains, length, python_asserts) or `module:function`, a
    function of a file in train.rl.reward_files taking (prompt, completion, example) -> float."""
    weight: float = 1.0
    """The reward's weight in the sum that makes each answer's reward."""
    pattern: str | None = None
    """exact_match: a regex whose first group (or whole match) is the answer, compared with the
    example's `answer` (default: the last number in the text); regex: the pattern the answer must
    contain (Python `re.search`)."""
    min_tokens: int = Field(0, ge=0)
    """length: the fewest tokens an answer may have."""
    max_tokens: int | None = Field(None, gt=0)
    """length: the most tokens an answer may have (null: train.rl.max_new_tokens). An answer counts
    only when it ended by itself (its end-of-turn token), not when cut at max_new_tokens."""
    timeout_s: float = Field(5.0, gt=0, le=600)
    """python_asserts: wall-clock limit of one answer's run (its CPU time too)."""
    memory_mb: int = Field(256, ge=16)
    """python_asserts: address-space limit of one answer's run."""
    allow_unsandboxed: bool = False
    """python_asserts: run answers without the Linux namespace sandbox where namespaces are not
    available (only the resource limits and a temporary directory then). Without it such a
    machine refuses the reward."""

    @model_validator(mode="after")
    def _options(self) -> RewardConfig:
        name = self.function
        if name not in REWARD_OPTIONS and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", name):
            raise ValueError(f"reward function {name!r} is neither a built-in ({', '.join(REWARD_OPTIONS)}) nor "
                             "`module:function`")
        allowed = REWARD_OPTIONS.get(name, set())
        defaults = RewardConfig.model_construct()
        for key in ("pattern", "min_tokens", "max_tokens", "timeout_s", "memory_mb", "allow_unsandboxed"):
            if key not in allowed and getattr(self, key) != getattr(defaults, key, None):
                raise ValueError(f"reward {name!r} has no option {key}" +
                                 (f" (its options: {', '.join(sorted(allowed))})" if allowed else " (it takes none)"))
        if name == "regex" and not self.pattern:
            raise ValueError("reward 'regex' needs a pattern")
        for pattern in [self.pattern] if self.pattern else []:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"reward {name!r}: pattern {pattern!r} is not a valid regex ({exc})") from None
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ValueError("reward 'length': max_tokens is below min_tokens")
        return self


class RlConfig(Section):
    """Reinforcement learning with verifiable rewards (train.task rl): rollouts, rewards and the loss."""

    group_size: int = Field(8, ge=2, le=256)
    """Answers sampled per prompt; each answer's advantage is its reward against its group's."""
    max_new_tokens: int = Field(64, gt=0)
    """The longest answer sampled."""
    temperature: float = Field(1.0, gt=0, le=2)
    """Sampling temperature of the rollouts (the loss scores the tokens at the same temperature)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling of the rollouts."""
    loss: Literal["grpo", "dr_grpo"] = "grpo"
    """grpo: advantages normalised by the group's standard deviation, each answer's loss a mean over
    its tokens; dr_grpo (Dr. GRPO): no standard-deviation scaling, token losses summed and divided by
    max_new_tokens (no length bias)."""
    clip_epsilon: float = Field(0.2, gt=0, lt=1)
    """The importance ratio is clipped to [1 - clip_epsilon, 1 + clip_epsilon] (PPO's clip)."""
    kl_beta: float = Field(0.0, ge=0)
    """Weight of the per-token KL estimate to the reference (the model with its LoRA adapters
    disabled, or a frozen copy of the starting weights); 0: no reference."""
    steps_per_generation: int = Field(1, ge=1, le=64)
    """Optimizer steps per batch of rollouts: more than 1 reuses them with the importance ratio."""
    rewards: list[RewardConfig] = Field(default_factory=list)
    """The rewards summed (with their weights) into each answer's reward; at least one."""
    allow_user_rewards: bool = False
    """Allow `module:function` rewards: code from train.rl.reward_files runs in the training process."""
    reward_files: list[str] = Field(default_factory=list)
    """Python files defining the user reward functions; `prepare` copies them into the run (rewards/)
    and records their hashes in the manifest, and the run loads them from there."""


class TrainConfig(Section):
    """The training loop: batch, schedule, precision, checkpoints and stopping rules."""

    task: Literal["pretrain", "sft", "classify", "preference", "rl"] = "pretrain"
    """pretrain: next-token on token shards; sft: next-token on completions only; classify: labels;
    preference: chosen over rejected answers (train.preference); rl: answers sampled and scored by
    rewards (train.rl)."""
    seed: int = Field(1337, ge=0)
    """Seed of model init, data order and dropout."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """auto picks cuda, then mps, then cpu."""
    sequence_length_tokens: int = Field(256, gt=0)
    """Tokens per training sequence (at most the model's max_position_embeddings)."""
    global_batch_size: int = Field(16, gt=0)
    """Sequences per optimizer step, over all devices."""
    micro_batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] = 16
    """Sequences per forward pass per device; gradient accumulation makes up the rest.
    auto picks the largest that the memory plan says fits."""
    max_steps: int | None = Field(1000, gt=0)
    """Stop after this many optimizer steps (null: no step limit)."""
    max_tokens: int | None = Field(None, gt=0)
    """Stop after this many training tokens (null: no token limit)."""
    max_time_s: float | None = Field(None, gt=0)
    """Stop, with a checkpoint, after this many seconds of training (null: no time limit)."""
    learning_rate: float = Field(1e-3, gt=0, le=10)
    """Peak learning rate."""
    min_learning_rate: float = Field(1e-4, ge=0)
    """Learning rate at the end of the decay."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup."""
    warmup_steps: int = Field(50, ge=0)
    """Linear warmup from 0 to the peak learning rate."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW decoupled weight decay (never applied to norms, biases and embeddings)."""
    beta1: float = Field(0.9, ge=0, lt=1)
    """AdamW first-moment decay."""
    beta2: float = Field(0.95, ge=0, lt=1)
    """AdamW second-moment decay."""
    adam_eps: float = Field(1e-8, gt=0)
    """AdamW epsilon."""
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    """adamw: torch's AdamW, fp32 moments (8 bytes per trainable parameter). adamw_8bit:
    bitsandbytes' AdamW8bit, block-wise 8-bit moments (~2 bytes per parameter; one process).
    paged_adamw_8bit: the same with its states in CUDA unified memory, paged to the CPU under
    memory pressure (CUDA only: a CPU run refuses it and names adamw_8bit)."""
    grad_clip_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this (null: no clipping)."""
    precision: Literal["auto", "fp32", "bf16", "bf16-weights", "fp16"] = "auto"
    """bf16: autocast (fp32 weights, bf16 matmuls). bf16-weights: the model's weights and
    activations in bf16 end to end, fp32 master weights and AdamW state (one process, no LoRA,
    no privacy.dp). fp16: autocast with loss scaling (CUDA). auto: on CPUs with fast bf16,
    bf16-weights where it applies (measured faster: benchmarks/train_throughput.py), else bf16;
    on GPUs bf16, or fp16 + loss scaling where bf16 is slow; else fp32."""
    compile: bool | Literal["auto"] = False
    """torch.compile the model for the training step: true (a failed compile falls back to eager
    with a warning), auto (compile when the run is long enough to repay it, keep it only when a
    timed dry run shows it faster), or false. One process only; privacy.dp trains eager."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    distributed: Literal["auto", "ddp", "fsdp"] = "auto"
    """How many processes share the model (`llmkit train --nproc-per-node N`, or torchrun). ddp:
    each holds all of it; fsdp: FSDP2 shards it per transformer block (bf16 compute, fp32
    gradient reduction under bf16). auto: one plain process without torchrun; under torchrun, ddp
    when weights, gradients and AdamW state fit one device by the memory plan, else fsdp."""
    eval_every_steps: int = Field(100, gt=0)
    """Evaluate on the validation set every this many steps."""
    eval_batches: int = Field(20, gt=0)
    """Validation micro-batches per evaluation."""
    eval_at_start: bool = False
    """Also evaluate before step 1 (a fresh run, not a resumed one), recorded at step 0: the starting
    point of every validation curve (a preference run's reward accuracy starts at 0.5 there)."""
    log_every_steps: int = Field(10, gt=0)
    """Write a metrics line every this many steps."""
    checkpoint_every_steps: int = Field(200, gt=0)
    """Commit a checkpoint every this many steps."""
    keep_last: int = Field(3, ge=1)
    """Committed checkpoints kept; older ones are deleted after a new one commits."""
    checkpoint_uri: str | None = None
    """Also commit every checkpoint to this fsspec URL (s3://bucket/prefix, gs://, az://; needs
    s3fs, gcsfs or adlfs): uploaded after the local commit, the COMMITTED object last; a resume
    on a machine without the local copy downloads the newest one. Nodes that do not share
    runs_root each upload their own shards; rank 0 commits."""
    nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN/inf loss or gradient: stop with an error, or skip that batch. Never stepped."""
    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)
    """Experiment trackers that get what metrics.jsonl gets (loss, lr, tokens/s, MFU, evaluations),
    with the resolved config and the manifest as parameters and the run's report as an artifact:
    tensorboard (events under the run's tensorboard/), wandb (W&B: WANDB_MODE=offline keeps its
    files under the run's wandb/), mlflow (to MLFLOW_TRACKING_URI). Each needs its extra; a tracker
    that fails only warns: training and metrics.jsonl go on."""
    tracker_project: str | None = None
    """W&B project and MLflow experiment name; null: llmkit."""
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    """Preference tuning (task preference): the loss and the reference model."""
    rl: RlConfig = Field(default_factory=RlConfig)
    """Reinforcement learning (task rl): rollouts, rewards, loss."""

    @model_validator(mode="before")
    @classmethod
    def _tensorboard_moved(cls, data: Any) -> Any:
        """Configs written before train.trackers: `tensorboard: true` means trackers [tensorboard]."""
        if isinstance(data, dict) and "tensorboard" in data:
            data = dict(data)
            on = data.pop("tensorboard")
            if not isinstance(on, bool):
                raise ValueError("train.tensorboard (now train.trackers: [tensorboard]) must be true or false")
            trackers = list(data.get("trackers") or [])
            if on and "tensorboard" not in trackers:
                data["trackers"] = [*trackers, "tensorboard"]
        return data

    @field_validator("trackers")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a tracker twice")
        return value

    @model_validator(mode="after")
    def _batch_shapes(self) -> TrainConfig:
        mb = self.micro_batch_size
        if isinstance(mb, int) and self.global_batch_size % mb:
            raise ValueError(
                f"micro_batch_size {mb} does not divide global_batch_size "
                f"{self.global_batch_size}; use a divisor, e.g. "
                f"{_largest_divisor_at_most(self.global_batch_size, mb)}"
            )
        if self.min_learning_rate > self.learning_rate:
            raise ValueError("min_learning_rate is larger than learning_rate")
        if self.max_steps is None and self.max_tokens is None and self.max_time_s is None:
            raise ValueError("set at least one of max_steps, max_tokens, max_time_s")
        return self




def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


class EvalConfig(Section):
    """What `llmkit eval` measures and which samples it shows."""

    batches: int = Field(50, gt=0)
    """Validation micro-batches for loss and perplexity."""
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["The for statement", "A class is", "Exceptions are"]
    )
    """Fixed prompts whose greedy continuations are recorded with every eval."""
    sample_max_new_tokens: int = Field(48, gt=0)
    """Tokens generated for each sample prompt."""
    harness_tasks: list[str] = Field(default_factory=list)
    """lm-evaluation-harness task names (needs the eval extra)."""
    held_out_questions: Literal["embedded"] | None = None
    """embedded: also ask a chat model 24 fixed questions about topics of the embedded
    documentation, in phrasings that data.embedded_sft: questions never uses, and score each greedy
    answer right when its first sentence names the topic asked or it begins as the topic's
    documentation (the quickstart sets it). eval.json gets metrics.held_out_score (the share right) and each answer.
    null: none."""


class GenerateConfig(Section):
    """Default sampling for `llmkit generate`, `chat` and the server."""

    max_new_tokens: int = Field(128, gt=0)
    """Most tokens to generate."""
    temperature: float = Field(0.8, ge=0, le=2)
    """0 is greedy decoding."""
    top_k: int | None = Field(None, gt=0)
    """Keep only the k most likely tokens (null: off)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: keep the smallest set with this total probability."""
    repetition_penalty: float = Field(1.0, ge=0.01, le=10)
    """Divide the logits of tokens already present (1.0: off)."""
    stop: list[str] = Field(default_factory=list)
    """Stop when any of these strings appears (it is not included in the output)."""
    seed: int | None = Field(None, ge=0)
    """Sampling seed; null draws a fresh one."""


class ServeConfig(Section):
    """The OpenAI-compatible HTTP server."""

    host: str = "127.0.0.1"
    """Address to bind. A non-loopback address needs an API key or allow_unauthenticated."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port (0 picks a free one)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key; null: no key."""
    allow_unauthenticated: bool = False
    """Allow a non-loopback bind without an API key (warned about at start)."""
    engine: Literal["llmkit", "vllm"] = "llmkit"
    """llmkit: the in-process batching engine; vllm: hand the exported model to vLLM (GPU)."""
    max_concurrency: int = Field(16, gt=0)
    """Requests generating at once; more wait in the queue."""
    max_queue: int = Field(64, ge=0)
    """Requests allowed to wait; beyond it: 429 with Retry-After."""
    max_batch_size: int = Field(16, gt=0)
    """Sequences decoded together in one step."""
    dtype: Literal["fp32", "bf16", "int8", "int4"] = "fp32"
    """Weights and arithmetic of the llmkit engine. fp32: exactly the model that was evaluated.
    bf16: half the memory traffic per token, faster decode where the CPU (AVX-512 BF16, AMX) or
    GPU runs bf16 natively; `llmkit verify --bf16` records its logit difference and greedy
    agreement against fp32. int8 / int4 (CPU): weight-only quantized linear layers (`llmkit.wquant`:
    8-bit per-row scales; 4-bit in groups of 32, the head at 8), fp32 activations; a quarter / about
    a sixth of the weights' bytes; `llmkit verify --endpoint` reports the served model's perplexity
    against fp32. vLLM picks its own dtype (int8 / int4 are refused there: vLLM serves checkpoints
    quantized beforehand)."""
    compile: bool | Literal["auto"] = "auto"
    """torch.compile the decode step. llmkit engine: true compiles it at start-up, before the
    server reports ready (one compile for a single row and one for several: 0.5-2.5 minutes on 2
    CPU cores), with the weights frozen as constants, for Llama, Mistral, Qwen2 and Qwen3 models;
    worth it for small models, whose step is small operations (`tiny`: batch-1 decode 1.4-2.6x
    faster), not for ~100M-parameter fp32/bf16 ones, whose step is memory traffic (0.7-0.8x;
    benchmarks/quantized_decode.py --compile); auto and false decode eagerly (ready
    in seconds). vllm engine: auto and true keep vLLM's own compilation and CUDA graphs, false
    passes --enforce-eager."""
    pack_weights: bool | Literal["auto"] = "auto"
    """llmkit engine on a CPU: decode with copies of the projection weights laid out once for
    oneDNN instead of BLAS calls that re-pack every weight at every step (~100M Llama on 2 cores:
    1-row step 1.4x, 16-row step 1.9x faster). auto: only the weight shapes measured faster at
    start-up (small ones often are not), and nothing when the copies (the projections' size once
    more) would exceed half the available RAM; true: every projection; false: never. The
    products equal BLAS's to float rounding. vllm engine: not applicable (true is refused)."""
    max_body_bytes: int = Field(1_048_576, gt=0)
    """Largest request body accepted (413 beyond)."""
    request_timeout_s: float = Field(300.0, gt=0)
    """A request still generating after this long is ended."""
    drain_timeout_s: float = Field(30.0, ge=0)
    """On SIGTERM, how long in-flight requests may take to finish."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed by CORS; empty: no CORS headers."""
    ui: bool = True
    """Serve the chat page at / (one self-contained file, strict Content-Security-Policy)."""
    prefix_cache_mb: float = Field(256.0, ge=0)
    """llmkit engine: memory for the keys and values of prompt prefixes, reused by later requests
    that start with the same tokens (a system prompt, a tool list, few-shot examples) instead of
    prefilling them again; blocks of 16 tokens keyed by every token before them and by the model,
    least recently used evicted first. 0: off. /metrics reports the hit rate, the tokens served
    from the cache and the bytes held. Llama, Mistral, Qwen2 and Qwen3 models (full attention)."""
    adapters: dict[str, str] = Field(default_factory=dict)
    """llmkit engine: LoRA adapters served on the one base model, {name: LoRA run directory or PEFT
    adapter directory}; a request picks one by its `model` (the base by the base's name), rows of
    different adapters decode in one batch, /v1/models lists them. Plain LoRA (not DoRA), on the
    base they were trained on; with serve.compile: true refused."""
    allow_adapter_loading: bool = False
    """Let API clients load and unload adapters while serving (vLLM's POST /v1/load_lora_adapter
    {lora_name, lora_path} and /v1/unload_lora_adapter {lora_name}, behind the API key). The path is
    read on the server: turn it on only for clients you trust with the server's files."""
    tool_parser: Literal["auto", "hermes", "llama3_json", "mistral"] = "auto"
    """How tool calls are read from the model's answers (and written when tool_choice forces
    one). auto: from the chat template (`<tool_call>` tags: hermes, as llmkit's own template, Qwen
    and Hermes write them; Llama 3 headers: llama3_json; `[TOOL_CALLS]`: mistral)."""

    @field_validator("api_key_env")
    @classmethod
    def _key_is_env_name(cls, value: str | None) -> str | None:
        return _check_env_name(value)

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        bad = [n for n in value if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_:-]{0,127}", n)]
        if bad:
            raise ValueError(f"adapter names are letters, digits and _ : - (got {bad[0][:40]!r})")
        return value

    @model_validator(mode="after")
    def _adapters_are_possible(self) -> ServeConfig:
        if (self.adapters or self.allow_adapter_loading) and self.compile is True:
            raise ValueError("serve.compile: true with LoRA adapters is not supported (the compiled step would not see "
                             "which adapter each row uses); set serve.compile to auto")
        if (self.adapters or self.allow_adapter_loading) and self.engine == "vllm":
            raise ValueError("serve.adapters and allow_adapter_loading apply to the llmkit engine (vLLM: --lora-modules)")
        return self


class PlanConfig(Section):
    """Defaults for `llmkit plan`: which hardware, which cloud, what budget."""

    devices: list[str] = Field(default_factory=list)
    """Candidate device names (e.g. H100-80GB); empty: every known device."""
    num_devices: int | None = Field(None, gt=0)
    """Plan on exactly this many devices (null: compare 1, 2, 4 ... 64)."""
    sharding: bool = True
    """Allow FSDP (weights, gradients and optimizer state split over the devices); false: every
    device holds the whole model (plain data parallelism)."""
    cloud: Literal["any", "aws", "gcp", "azure", "lambda", "runpod"] = "any"
    """Price offerings from this cloud only."""
    spot: bool = False
    """Use spot / preemptible prices."""
    budget_usd: float | None = Field(None, gt=0)
    """Most money the run may cost (null: no limit)."""
    deadline_hours: float | None = Field(None, gt=0)
    """Longest the run may take (null: no limit)."""


class LaunchConfig(Section):
    """The same run rendered for a cluster scheduler, a container or a cloud (`llmkit launch`)."""

    target: str = "slurm"
    """Which engine's spec `llmkit launch` renders when --target is not given: a registered launch
    target (llmkit.registry.LAUNCH_TARGETS: slurm, kubernetes, skypilot, docker)."""

    @field_validator("target")
    @classmethod
    def _registered_target(cls, value: str) -> str:
        from llmkit.registry import LAUNCH_TARGETS

        if value not in LAUNCH_TARGETS:
            raise ValueError(f"{value!r} is not a launch target; registered: {', '.join(LAUNCH_TARGETS)}")
        return value
    nodes: int = Field(1, gt=0)
    """Machines; more than one runs torchrun's multi-node rendezvous on the first."""
    devices_per_node: int = Field(1, gt=0)
    """GPUs per machine (CPU runs: training processes per machine)."""
    accelerator: str | None = None
    """GPU as `llmkit plan` names it (H100, A100-80GB, L4 ...), optionally with the count per node
    (H100:8 sets devices_per_node); null: CPU only."""
    cloud: Literal["any", "aws", "gcp", "azure", "kubernetes"] = "any"
    """SkyPilot: where to provision (any: the cheapest that has the GPU); also the prices shown."""
    region: str | None = None
    """SkyPilot: the cloud region (null: any)."""
    spot: bool = False
    """SkyPilot: spot / preemptible instances as a managed job that resumes after preemption; also
    the prices shown."""
    image: str | None = None
    """Container image with llmkit installed (Kubernetes: required; SkyPilot: optional; Docker: the
    tag to build). `llmkit launch --target docker` renders a Dockerfile for it."""
    checkpoint_uri: str | None = None
    """Where checkpoints outlive a node: a bucket (s3://, gs://, az://), a Kubernetes volume claim
    (pvc://NAME, mounted as runs_root) or a shared file-system folder (Slurm; used as runs_root).
    null: runs_root as it is (Slurm: must be shared by the nodes)."""
    max_restarts: int = Field(3, ge=0)
    """torchrun restarts after a worker failure; each resumes from the latest checkpoint."""
    time_limit_s: int | None = Field(None, gt=0)
    """Wall-clock limit the scheduler enforces; llmkit checkpoints before it (null: none)."""
    secret_envs: list[str] = Field(default_factory=lambda: ["HF_TOKEN"])
    """Names of environment variables passed through to the job (never their values)."""

    @field_validator("secret_envs")
    @classmethod
    def _env_names(cls, values: list[str]) -> list[str]:
        for v in values:
            _check_env_name(v)
            if _SECRET_VALUE.match(v):
                raise ValueError(f"{v[:4]}... looks like a secret value, not the name of an environment variable; "
                                 "export it (e.g. export HF_TOKEN=...) and list the variable's name here")
        return values

    @field_validator("accelerator")
    @classmethod
    def _accelerator(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*(:[1-9][0-9]*)?", value):
            raise ValueError("must be a GPU name, optionally with a count per node (H100, H100:8, A100-80GB:4)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _count_in_accelerator(cls, data: Any) -> Any:
        acc = data.get("accelerator") if isinstance(data, dict) else None
        if isinstance(acc, str) and re.fullmatch(r".+:[1-9][0-9]*", acc):
            count = int(acc.rsplit(":", 1)[1])
            given = data.get("devices_per_node")
            if given is not None and given != count:
                raise ValueError(f"accelerator {acc} says {count} per node but devices_per_node is {given}; "
                                 "give the count once")
            data = {**data, "devices_per_node": count}
        return data


class DpConfig(Section):
    """Differentially private fine-tuning (DP-SGD with Opacus): SFT and classification, one process."""

    enabled: bool = False
    """Train with per-example gradient clipping and Gaussian noise; epsilon spent goes to the
    metrics, checkpoints and report. train.global_batch_size becomes the expected size of a
    Poisson-sampled batch; train.grad_clip_norm then clips the noised mean gradient (post-processing:
    the guarantee holds); train.precision auto means fp32."""
    target_epsilon: float | None = Field(None, gt=0)
    """Spend at most this epsilon over train.max_steps: the noise multiplier is computed for it."""
    noise_multiplier: float | None = Field(None, ge=0)
    """Or give the noise (std = noise_multiplier x max_grad_norm) and read the epsilon spent."""
    delta: float | None = Field(None, gt=0, lt=1)
    """The delta of (epsilon, delta)-DP; null: 1 / (10 x training examples)."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Each example's gradient is clipped to this L2 norm."""

    @model_validator(mode="after")
    def _one_noise_source(self) -> DpConfig:
        if self.enabled and (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("with enabled: true set exactly one of target_epsilon (the noise is computed for it) "
                             "and noise_multiplier (the epsilon spent is reported)")
        return self


class PrivacyConfig(Section):
    """Protecting the training data."""

    pii: Literal["off", "report", "redact", "drop_document"] = "off"
    """PII in the corpus and the SFT / classification files, found by `prepare` (e-mail, phone,
    payment card, IBAN, IP address, US SSN, credentials, URLs with user info): report (counts and
    locations in pii_report.jsonl, text unchanged), redact (typed placeholders such as <EMAIL>),
    or drop_document. Names and places only with a named-entity model (ner_model)."""
    ner_model: str | None = "auto"
    """Names and places (NAME, LOCATION) in privacy.pii, found with Microsoft Presidio and a spaCy
    pipeline (extra `ner`): auto (en_core_web_lg, _md, _sm or _trf if installed as a package), a
    package name or a saved pipeline's folder, or null (off). Never downloaded: without a model,
    the output and the report say that names were not detected."""
    phone_regions: list[str] = Field(default_factory=lambda: ["US"])
    """Regions whose national phone formats count (ISO 3166 codes); numbers written with +country
    are found whatever the region."""
    dp: DpConfig = Field(default_factory=DpConfig)
    """Differential privacy for fine-tuning."""
    offline: bool = False
    """Send nothing anywhere: sets HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, TRANSFORMERS_OFFLINE and the
    telemetry opt-outs for every stage, and refuses a non-loopback serve.host and a remote
    train.checkpoint_uri."""

    encryption_key_env: str | None = None
    """Name of the environment variable that holds a 256-bit key (base64; `llmkit privacy keygen`
    makes one). When set, what llmkit writes from the data is encrypted at rest with AES-256-GCM:
    token shards, SFT / classification sets, the tokenizer, checkpoints, final/ and eval samples
    (config, metrics and the manifest stay readable). Every stage reads the run with the key
    present; `llmkit export --decrypt` writes plain files. One process per run (sharded
    checkpoints of distributed runs are not sealed)."""

    @field_validator("encryption_key_env")
    @classmethod
    def _key_env(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("must be the NAME of an environment variable (such as LLMKIT_KEY), never the key itself")
        return value

    @field_validator("phone_regions")
    @classmethod
    def _regions(cls, values: list[str]) -> list[str]:
        if not values or any(not re.fullmatch(r"[A-Z]{2}", v) for v in values):
            raise ValueError("must be a non-empty list of two-letter region codes such as US, GB, DE")
        return values


class RunConfig(Section):
    """One run: every stage from prepare to serve reads this file."""

    name: str
    """Run name; the run directory is `<runs_root>/<name>`."""
    runs_root: str = "runs"
    """Folder that holds run directories."""
    hub_token_env: str | None = "HF_TOKEN"
    """Name of the environment variable with a Hugging Face token (never the token itself)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The network."""
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    """Text to tokens."""
    data: DataConfig = Field(default_factory=DataConfig)
    """The corpus and datasets."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """The training loop."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation."""
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    """Sampling defaults."""
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    """Protecting the training data."""
    serve: ServeConfig = Field(default_factory=ServeConfig)
    """The HTTP server."""
    plan: PlanConfig = Field(default_factory=PlanConfig)
    """Sizing and cost."""
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    """Cluster and cloud launch."""

    @field_validator("hub_token_env")
    @classmethod
    def _token_is_env_name(cls, value: str | None) -> str | None:
        return _check_env_name(value)

    @field_validator("runs_root")
    @classmethod
    def _local_runs_root(cls, value: str) -> str:
        if "://" in value:
            raise ValueError("must be a local or shared-file-system folder (data, metrics and the final model are "
                             "written there); for checkpoints in object storage set train.checkpoint_uri "
                             f"to {value.rstrip('/')}/<name>")
        return value

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not _RUN_NAME.match(value):
            raise ValueError(
                "must be 1-100 characters of letters, digits, '.', '_' or '-', starting with a "
                "letter or digit (it becomes a directory name)"
            )
        return value

    @model_validator(mode="after")
    def _offline(self) -> RunConfig:
        if not self.privacy.offline:
            return self
        host = self.serve.host
        if host not in ("localhost", "::1") and not host.startswith("127."):
            raise ValueError(f"privacy.offline is true but serve.host is {host}: the server would be reachable from "
                             "other machines; keep 127.0.0.1 (or turn privacy.offline off)")
        if self.train.checkpoint_uri and "://" in self.train.checkpoint_uri and \
                not self.train.checkpoint_uri.startswith("file://"):
            raise ValueError(f"privacy.offline is true but train.checkpoint_uri is {self.train.checkpoint_uri}: "
                             "checkpoints would leave this machine; use a local path (or turn privacy.offline off)")
        return self

    @model_validator(mode="after")
    def _dp_is_possible(self) -> RunConfig:
        dp, tc = self.privacy.dp, self.train
        if not dp.enabled:
            return self
        if tc.task == "pretrain":
            raise ValueError("privacy.dp covers fine-tuning (train.task: sft or classify): pretraining windows cut "
                             "across documents, so no example is one person's record")
        if tc.task == "preference":
            raise ValueError("privacy.dp does not cover train.task preference yet: its per-example gradients are "
                             "taken one row at a time, and a preference loss couples a chosen and a rejected row "
                             "(and KTO a whole batch); train without privacy.dp, or SFT with it")
        if tc.task == "rl":
            raise ValueError("privacy.dp does not cover train.task rl: its answers are sampled from the model "
                             "itself, and their group-relative advantages couple the examples of a group; train "
                             "without privacy.dp")
        if tc.task == "sft" and self.data.sft_packing:
            raise ValueError("privacy.dp needs one example per row: set data.sft_packing: false (packed rows mix "
                             "examples, and their gradients cannot be clipped one by one)")
        if tc.precision not in ("fp32", "auto"):
            raise ValueError(f"privacy.dp trains in fp32; train.precision is {tc.precision}")
        if tc.compile is True:
            raise ValueError("privacy.dp computes per-example gradients with hooks torch.compile does not keep: set "
                             "train.compile: false or auto (auto trains DP runs eager)")
        if dp.target_epsilon is not None and tc.max_steps is None:
            raise ValueError("privacy.dp.target_epsilon needs train.max_steps (the noise is computed for that many "
                             "steps); or set privacy.dp.noise_multiplier instead")
        if self.launch.nodes * self.launch.devices_per_node > 1:
            raise ValueError("privacy.dp runs in one process: set launch.nodes and launch.devices_per_node to 1")
        return self

    @model_validator(mode="after")
    def _rl_is_possible(self) -> RunConfig:
        tc, rl = self.train, self.train.rl
        if tc.task != "rl":
            return self
        if not rl.rewards:
            raise ValueError("train.task is rl but train.rl.rewards is empty: a run with no reward learns nothing; "
                             "add one, e.g. rewards: [{function: contains}]")
        user = [r.function for r in rl.rewards if ":" in r.function]
        if user and not rl.allow_user_rewards:
            raise ValueError(f"reward {user[0]!r} is user code, which runs inside the training process: set "
                             "train.rl.allow_user_rewards: true to allow it (and list its file in train.rl.reward_files)")
        if user and not rl.reward_files:
            raise ValueError(f"reward {user[0]!r} is user code, but train.rl.reward_files names no file to load it from")
        if tc.global_batch_size % rl.group_size:
            raise ValueError(f"train.global_batch_size {tc.global_batch_size} counts answers and must be a multiple "
                             f"of train.rl.group_size {rl.group_size} (whole groups of answers a step)")
        if tc.compile is True:
            raise ValueError("train.compile: true does not apply to train.task rl (its step alternates sampling and "
                             "training, with shapes that change every step); set compile: false or auto")
        if tc.distributed == "fsdp":
            raise ValueError("train.task rl runs one process or DDP: FSDP would gather the model for every "
                             "sampled token; set train.distributed: ddp or auto")
        if self.data.sft_packing:
            raise ValueError("data.sft_packing does not apply to train.task rl (sampled answers are padded one a "
                             "row); remove it")
        return self

    @model_validator(mode="after")
    def _sealed_runs_are_one_process(self) -> RunConfig:
        procs = self.launch.nodes * self.launch.devices_per_node
        if self.privacy.encryption_key_env and procs > 1:
            raise ValueError(f"privacy.encryption_key_env is set and launch runs {procs} processes: sharded "
                             "checkpoints of distributed runs are not encrypted yet; train on one device "
                             "(launch.nodes: 1, launch.devices_per_node: 1) or turn encryption off")
        return self

    @model_validator(mode="after")
    def _tokenizer_source(self) -> RunConfig:
        if self.tokenizer.kind == "pretrained" and not self.tokenizer.path and not self.model.from_pretrained:
            raise ValueError("tokenizer.kind 'pretrained' needs tokenizer.path (a local directory or a Hub id) or "
                             "model.from_pretrained, whose tokenizer it then takes")
        return self

    @model_validator(mode="after")
    def _fits_positions(self) -> RunConfig:
        seq, pos = self.train.sequence_length_tokens, self.model.max_position_embeddings
        if self.model.from_pretrained is None and seq > pos:
            raise ValueError(
                f"train.sequence_length_tokens {seq} is longer than "
                f"model.max_position_embeddings {pos}; lower it or raise the model's positions"
            )
        return self
