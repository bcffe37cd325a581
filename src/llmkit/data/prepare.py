"""`llmkit prepare`: corpus -> tokenizer -> token shards (or SFT / classification sets).

Writes into the run directory: ``tokenizer/`` (trained or copied), then, by ``train.task``:
``data/{train,val}.bin`` + ``data/meta.json`` (pretrain), ``data/sft/`` (sft),
``data/classify/`` (classify) or ``data/preference/`` (preference). Everything is built under a temporary name and moved into place
when complete; a failure leaves the previous outputs as they were.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.config.schema import RunConfig
from llmkit.data import classify as classify_data
from llmkit.data import sft as sft_data
from llmkit.data.corpus import CorpusStats, iter_documents
from llmkit.data.ragged import write_ragged
from llmkit.data.fastbpe import choose_encoder
from llmkit.data.shards import ShardMeta, is_validation, publish_shards, token_dtype, write_token_shards
from llmkit.data.tokenizer import (eos_id, load_tokenizer, portable_tokenizer_config, tokenizer_hash, train_bpe,
                                   turn_end_ids, wrap)
from llmkit.errors import UsageError
from llmkit.privacy.pii import PII_REPORT, PiiFilter, Scrubber
from llmkit.fsutil import atomic_write_text, staged_dir
from llmkit.privacy import crypto
from llmkit.config.derived import run_context
from llmkit.privacy.context import RunContext
from llmkit.rundir import RunDir

Log = Callable[[str], None]


@dataclass
class PrepareResult:
    """What `prepare` made, for the CLI to print."""

    run_dir: Path
    vocab_size: int
    tokenizer_trained: bool
    outputs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def ensure_tokenizer(config: RunConfig, tok_dir: Path, retrain: bool, log: Log) -> tuple[Any, bool]:
    """Load the run's tokenizer, or make it (train a BPE / copy a pretrained one) first."""
    tcfg = config.tokenizer
    if tok_dir.exists() and not retrain:
        tok = load_tokenizer(tok_dir, config.model.trust_remote_code)
        if tcfg.kind == "bpe" and len(tok) != tcfg.vocab_size:
            raise UsageError(
                f"{tok_dir} holds a {len(tok)}-token tokenizer, the config asks for {tcfg.vocab_size}",
                "the run directory already has a tokenizer; its checkpoints depend on it",
                "use a new run name, or pass --retrain-tokenizer to replace it (old checkpoints "
                "become unusable)",
            )
        log(f"tokenizer: using {tok_dir} ({len(tok)} tokens)")
        if crypto.active() is not None and not crypto.has_sealed(tok_dir):
            with crypto.scratch() as plain, staged_dir(tok_dir) as staged:  # encryption turned on since: seal it
                crypto.decrypt_tree(tok_dir, plain)
                crypto.seal_tree(plain, staged, crypto.active())
            log(f"tokenizer: {tok_dir} encrypted (it was written before privacy.encryption_key_env was set)")
        return tok, False
    if tcfg.kind == "pretrained":
        from llmkit.hub import resolve

        source = resolve(tcfg.path or config.model.from_pretrained or "", "tokenizer", config.hub_token_env, log=log)
        tok = load_tokenizer(source.path, config.model.trust_remote_code)
        trained = False
    else:
        log(f"tokenizer: training a {tcfg.vocab_size}-token byte-level BPE")
        from llmkit.data.progress import ByteProgress, corpus_bytes

        documents = ByteProgress("tokenizer: reading", corpus_bytes(config.data), log).wrap(iter_documents(config.data))
        scrub = pii_filter(config)  # the tokenizer learns from the text that will be trained on
        backend = train_bpe(scrub(documents) if scrub else documents, tcfg)
        tok = wrap(backend, tcfg, config.model.max_position_embeddings)
        trained = True
    if config.model.vocab_size is not None and len(tok) > config.model.vocab_size:
        raise UsageError(f"the tokenizer has {len(tok)} tokens but model.vocab_size is {config.model.vocab_size}",
                         "token ids would fall outside the embedding table",
                         f"set model.vocab_size to at least {len(tok)}, or null to follow the tokenizer")
    with staged_dir(tok_dir) as staged, crypto.writable_dir(staged) as tmp:  # sealed file by file with a key
        tok.save_pretrained(str(tmp))
        portable_tokenizer_config(tmp)
    return load_tokenizer(tok_dir, config.model.trust_remote_code), trained


def _check_context(tokens: int, seq_len: int, split: str) -> None:
    if tokens < seq_len + 1:
        raise UsageError(
            f"the {split} split has {tokens:,} tokens: too few for one {seq_len}-token sequence",
            f"training and evaluation need at least sequence_length_tokens + 1 = {seq_len + 1} "
            "tokens in each split",
            "add text, raise data.val_fraction, or lower train.sequence_length_tokens",
        )


def prepare_pretrain(config: RunConfig, tok: Any, data_dir: Path, log: Log) -> ShardMeta:
    """Tokenize the corpus into data/train.bin, data/val.bin and data/meta.json."""
    stats = CorpusStats()
    vocab = len(tok)
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.glob(".shards-*"):  # left by a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    scrub = pii_filter(config)
    with tempfile.TemporaryDirectory(prefix=".shards-", dir=data_dir) as staging:
        from llmkit.data.progress import ByteProgress, corpus_bytes

        corpus = ByteProgress("data: encoding", corpus_bytes(config.data), log).wrap(iter_documents(config.data, stats))
        encode, documents, engine = choose_encoder(tok.backend_tokenizer, scrub(corpus) if scrub else corpus,
                                                   config.data.fast_bpe, log)
        counts = write_token_shards(documents, encode, eos_id(tok), Path(staging), config.data.val_fraction, vocab)
        seq = config.train.sequence_length_tokens
        _check_context(counts["train_tokens"], seq, "train")
        _check_context(counts["val_tokens"], seq, "validation")
        meta = ShardMeta(dtype=token_dtype(vocab).name, vocab_size=vocab, eos_id=eos_id(tok),
                         val_fraction=config.data.val_fraction, source_bytes=stats.bytes,
                         source_sha256=stats.fingerprint, replaced_chars=stats.replaced_chars,
                         tokenizer_sha256=tokenizer_hash(RunDir(data_dir.parent).tokenizer), encoder=engine,
                         pii=finish_pii(scrub, RunDir(data_dir.parent), config.data.path or "embedded", log),
                         mix={"sources": stats.mix, "stopped_by": stats.mix_stopped_by} if stats.mix else None, **counts)
        publish_shards(Path(staging), data_dir, meta)
    if stats.replaced_chars:
        log(f"data: replaced {stats.replaced_chars} invalid UTF-8 sequences with U+FFFD")
    if stats.mix:
        log("data mix: " + ", ".join(f"{name} {e['share']:.1%} of documents (weight {e['weight']:.1%})"
                                     for name, e in stats.mix.items()) + f"; {stats.mix_stopped_by} ran out first")
    return meta


def pii_filter(config: RunConfig) -> PiiFilter | None:
    """privacy.pii as a filter over documents (None: off)."""
    p = config.privacy
    if p.pii == "off":
        return None
    from llmkit.privacy.pii import load_ner

    ner, names = load_ner(p.ner_model)
    return PiiFilter(p.pii, Scrubber(tuple(p.phone_regions), ner=ner), names=names)


def finish_pii(scrub: PiiFilter | None, run: RunDir, source: str | None, log: Log) -> dict[str, Any] | None:
    """Counts for meta.json, one line of output, and (report mode) the locations file of the run:
    where PII was (source, document, line, type), never the text."""
    if scrub is None:
        return None
    log(scrub.describe())
    if scrub.mode == "report":
        lines = "".join(json.dumps({"source": source, **loc}) + "\n" for loc in scrub.locations)
        atomic_write_text(run.root / PII_REPORT, lines)
        log(f"privacy: {len(scrub.locations)} location(s) in {run.root / PII_REPORT} (no matched text)")
    return scrub.summary()


def _split_examples(items: list[Any], val_fraction: float, what: str) -> tuple[list[Any], list[Any]]:
    train = [x for i, x in enumerate(items) if not is_validation(i, val_fraction)]
    val = [x for i, x in enumerate(items) if is_validation(i, val_fraction)]
    if not train or not val:
        raise UsageError(f"{len(items)} {what}: too few to split into training and validation",
                         f"with data.val_fraction {val_fraction} every {max(2, round(1 / val_fraction))}-th "
                         "example goes to validation",
                         "add examples or raise data.val_fraction")
    return train, val


def _sft_rows(config: RunConfig) -> tuple[Iterator[tuple[str, Any]], set[str] | None]:
    """(where, example) of the SFT data: data.sft_path's, or the embedded ones; and the wheres of
    the validation examples when the source splits them itself (None: every k-th is validation)."""
    if config.data.sft_path:
        from llmkit.data.sources import sft_rows

        return sft_rows(config.data), None
    if config.data.embedded_sft == "questions":
        from llmkit.data.docqa import embedded_questions

        train, val = embedded_questions(config.train.seed)
        rows = [(f"embedded question {i}", r) for i, r in enumerate(train)]
        held = [(f"embedded validation question {i}", r) for i, r in enumerate(val)]
        return iter(rows + held), {where for where, _ in held}
    from llmkit.data.toolchats import embedded_tool_examples

    return ((f"embedded tool conversation {i}", row) for i, row in enumerate(embedded_tool_examples(config.train.seed))), None


def prepare_sft(config: RunConfig, tok: Any, out: Path, log: Log, strict: bool = False) -> dict[str, Any]:
    """Chat-render and mask the SFT data into data/sft/, after checking it (``strict``: any
    failed check is an error, and nothing is written)."""
    source = config.data.sft_path or (f"the embedded documentation ({config.data.embedded_sft})"
                                      if config.data.embedded_sft else None)
    if source is None:
        raise UsageError("train.task is sft but data.sft_path is not set", "",
                         "set data.sft_path to a JSONL file of examples (or a dataset: see data.sft_path), or "
                         "data.embedded_sft: tools for tool-use conversations made from the embedded documentation")
    scrub = pii_filter(config)
    source_rows, val_wheres = _sft_rows(config)
    rows = list(sft_data.examples_of(source_rows, config.data.sft_fields))
    from collections import Counter

    shapes = dict(Counter(fmt for _, fmt, _, _ in rows).most_common())
    log(f"sft: {len(rows)} examples from {source}: "
        + ", ".join(f"{n} {fmt}" for fmt, n in shapes.items()))
    examples = [(where, msgs, tools) for where, _, msgs, tools in rows]
    if scrub:
        kept = []
        for i, (where, msgs, tools) in enumerate(examples):
            texts = scrub.example(i, [m["content"] for m in msgs])
            if texts is not None:
                kept.append((where, [{**m, "content": t} for m, t in zip(msgs, texts)], tools))
        examples = kept
    with_tools = sum(tools is not None for _, _, tools in examples)
    if with_tools:
        log(f"sft: {with_tools} example(s) with tools, rendered through the chat template's tools support")
    encoded = [sft_data.encode_example(tok, msgs, tools) for _, msgs, tools in examples]
    seq = config.train.sequence_length_tokens
    ends = turn_end_ids(tok)
    failed: dict[str, list[str]] = {name: [] for name in sft_data.CHECKS}
    for (where, msgs, _), (ids, mask) in zip(examples, encoded):
        for name in sft_data.check_example(msgs, ids, mask, seq, ends, lambda t: tok.decode([t])):
            failed[name].append(where)
    for name, wheres in failed.items():
        if wheres:
            log(f"sft check: {len(wheres)} example(s) with {sft_data.CHECKS[name]}: {'; '.join(wheres[:3])}"
                + (" ..." if len(wheres) > 3 else ""))
    if strict and any(failed.values()):
        names = [n for n, w in failed.items() if w]
        raise UsageError(f"--strict: {sum(len(failed[n]) for n in names)} SFT example(s) fail the checks "
                         f"({', '.join(names)})",
                         "; ".join(f"{sft_data.CHECKS[n]}: {failed[n][0]}" for n in names),
                         "fix or drop those examples, raise train.sequence_length_tokens for cut answers, "
                         "or run without --strict to train on them as they are")
    if val_wheres is None:
        train, val = _split_examples(encoded, config.data.val_fraction, "SFT examples")
    else:
        is_val = [where in val_wheres for where, _, _ in examples]
        train = [e for e, v in zip(encoded, is_val) if not v]
        val = [e for e, v in zip(encoded, is_val) if v]
    dtype = token_dtype(len(tok))
    meta: dict[str, Any] = {"format": "llmkit-sft-v1", "source_formats": shapes, "dtype": dtype.name, "vocab_size": len(tok),
                            "checks": {name: len(wheres) for name, wheres in failed.items()},
                            "pad_id": int(tok.pad_token_id if tok.pad_token_id is not None else eos_id(tok)),
                            "tokenizer_sha256": tokenizer_hash(RunDir(out.parent.parent).tokenizer),
                            "pii": finish_pii(scrub, RunDir(out.parent.parent), source, log)}
    with staged_dir(out) as tmp:
        for split, rows in (("train", train), ("val", val)):
            tokens = write_ragged(tmp, split, [r[0] for r in rows], dtype, [r[1] for r in rows])
            meta[f"{split}_examples"] = len(rows)
            meta[f"{split}_tokens"] = tokens
            meta[f"{split}_trained_tokens"] = int(sum(int(r[1].sum()) for r in rows))
            meta[f"{split}_longer_than_context"] = sum(len(r[0]) > seq + 1 for r in rows)
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
    if meta["train_longer_than_context"]:
        log(f"sft: {meta['train_longer_than_context']} training examples are longer than "
            f"{seq + 1} tokens and will be truncated")
    return meta


def prepare_classify(config: RunConfig, tok: Any, out: Path, log: Log) -> dict[str, Any]:
    """Tokenize the labelled file into data/classify/ with its label map."""
    if not config.data.classify_path:
        raise UsageError("train.task is classify but data.classify_path is not set", "",
                         "set data.classify_path to a JSONL or CSV file with text and label")
    rows = list(classify_data.read_classify_file(config.data.classify_path))
    scrub = pii_filter(config)
    if scrub:
        kept = []
        for i, (where, text, label) in enumerate(rows):
            texts = scrub.example(i, [text])
            if texts is not None:
                kept.append((where, texts[0], label))
        rows = kept
    train, val = _split_examples(rows, config.data.val_fraction, "labelled rows")
    labels = classify_data.label_map([r[2] for r in train])
    classify_data.check_val_labels([(r[0], r[2]) for r in val], labels)
    if len(labels) < 2:
        raise UsageError(f"the training split has a single label ({next(iter(labels))!r})",
                         "classification needs at least two classes", "add examples of other labels")
    dtype = token_dtype(len(tok))
    meta: dict[str, Any] = {"format": "llmkit-classify-v1", "dtype": dtype.name, "vocab_size": len(tok),
                            "num_labels": len(labels),
                            "pad_id": int(tok.pad_token_id if tok.pad_token_id is not None else eos_id(tok)),
                            "tokenizer_sha256": tokenizer_hash(RunDir(out.parent.parent).tokenizer),
                            "pii": finish_pii(scrub, RunDir(out.parent.parent), config.data.classify_path, log)}
    with staged_dir(out) as tmp:
        for split, part in (("train", train), ("val", val)):
            ids = [np.asarray(x, dtype=np.int64) for x in
                   (e.ids for e in tok.backend_tokenizer.encode_batch_fast([r[1] for r in part],
                                                                         add_special_tokens=False))]
            meta[f"{split}_examples"] = len(part)
            meta[f"{split}_tokens"] = write_ragged(tmp, split, ids, dtype)
            crypto.save_npy(tmp / f"{split}.labels.npy", np.asarray([labels[r[2]] for r in part], np.int64))
        crypto.write_text(tmp / "labels.json", json.dumps(labels, indent=2) + "\n")  # label names: sealed too
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
    log(f"classify: {len(labels)} labels: {', '.join(list(labels)[:10])}")
    return meta


def _scrubbed(scrub: PiiFilter | None, records: list[Any]) -> list[Any]:
    """Preference records with privacy.pii applied to every message (dropped ones left out)."""
    if scrub is None:
        return records
    from dataclasses import replace

    kept = []
    for i, r in enumerate(records):
        parts = [r.prompt, *r.answers]
        texts = scrub.example(i, [m["content"] for msgs in parts for m in msgs])
        if texts is None:
            continue
        it = iter(texts)
        new = [[{**m, "content": next(it)} for m in msgs] for msgs in parts]
        kept.append(replace(r, prompt=new[0], answers=tuple(new[1:])))
    return kept


def _preference_records(config: RunConfig, log: Log) -> tuple[list[Any], list[Any], str]:
    """(training, validation) records of the preference data, and where they came from."""
    from llmkit.data import preference as pref
    from llmkit.data.sources import example_rows

    d = config.data
    if d.preference_path:
        rows = example_rows(d.preference_path, d, "data.preference_path", "preference")
        records = list(pref.records_of(rows, d.preference_fields))
        train, val = _split_examples(records, d.val_fraction, "preference examples")
        return train, val, d.preference_path
    if d.source != "embedded":
        raise UsageError("train.task is preference but data.preference_path is not set", "",
                         "set data.preference_path to a JSONL file of pairs (or a dataset), or use "
                         "data.source: embedded for pairs made from the embedded documentation")
    train, val = pref.embedded_records(d.val_fraction, config.train.seed)
    log(f"preference: {len(train)} training and {len(val)} validation pairs made from the embedded documentation "
        "(the documentation's answer chosen, another statement's rejected; validation on other statements)")
    return train, val, "embedded"


def prepare_preference(config: RunConfig, tok: Any, out: Path, log: Log, strict: bool = False) -> dict[str, Any]:
    """Chat-render the preference data into data/preference/: per split, the pairs' chosen and
    rejected sequences and the unpaired (KTO) completions with their labels, loss masks on the
    answers. Pairs that cannot be trained as given are dropped and counted (``strict``: an error)."""
    from collections import Counter

    from llmkit.data import preference as pref

    train, val, source = _preference_records(config, log)
    scrub = pii_filter(config)
    train, val = _scrubbed(scrub, train), _scrubbed(scrub, val)
    shapes = dict(Counter(r.shape for r in train + val).most_common())
    log(f"preference: {len(train) + len(val)} examples from {source}: " + ", ".join(f"{n} {k}" for k, n in shapes.items()))
    seq = config.train.sequence_length_tokens
    dropped: dict[str, list[str]] = {name: [] for name in pref.DROPS}
    encoded: dict[str, list[tuple[Any, Any]]] = {}
    for split, records in (("train", train), ("val", val)):
        encoded[split] = []
        for r in records:
            rows, why = pref.encode(tok, r, seq)
            if why is not None:
                dropped[why].append(r.where)
            else:
                encoded[split].append((r, rows))
    for name, wheres in dropped.items():
        if wheres:
            log(f"preference: dropped {len(wheres)} example(s) with {pref.DROPS[name]}: {'; '.join(wheres[:3])}"
                + (" ..." if len(wheres) > 3 else ""))
    if strict and any(dropped.values()):
        names = [n for n, w in dropped.items() if w]
        raise UsageError(f"--strict: {sum(len(dropped[n]) for n in names)} preference example(s) would be dropped",
                         "; ".join(f"{pref.DROPS[n]}: {dropped[n][0]}" for n in names),
                         "fix or remove them, raise train.sequence_length_tokens for long answers, or run without "
                         "--strict to train without them")
    dtype = token_dtype(len(tok))
    meta: dict[str, Any] = {"format": "llmkit-preference-v1", "source_shapes": shapes, "dtype": dtype.name,
                            "vocab_size": len(tok), "dropped": {n: len(w) for n, w in dropped.items()},
                            "pad_id": int(tok.pad_token_id if tok.pad_token_id is not None else eos_id(tok)),
                            "tokenizer_sha256": tokenizer_hash(RunDir(out.parent.parent).tokenizer),
                            "pii": finish_pii(scrub, RunDir(out.parent.parent), source, log)}
    if not encoded["train"] or not encoded["val"]:
        raise UsageError(f"after dropping, the preference data has {len(encoded['train'])} training and "
                         f"{len(encoded['val'])} validation examples", "training and validation each need examples",
                         "add examples, or see the drops above")
    with staged_dir(out) as tmp:
        for split in ("train", "val"):
            _write_preference_split(tmp, split, encoded[split], dtype, meta)
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta


def _write_preference_split(tmp: Path, split: str, encoded: list[tuple[Any, Any]], dtype: Any,
                            meta: dict[str, Any]) -> None:
    """One split's pairs (chosen and rejected sequences, same order) and unpaired completions."""
    pairs = [rows for r, rows in encoded if len(rows) == 2]
    single = [(rows[0], r.label) for r, rows in encoded if len(rows) == 1]
    for part, items in (("chosen", [p[0] for p in pairs]), ("rejected", [p[1] for p in pairs]),
                        ("completion", [s[0] for s in single])):
        write_ragged(tmp, f"{split}.{part}", [ids for ids, _ in items], dtype, [m for _, m in items])
    crypto.save_npy(tmp / f"{split}.labels.npy", np.asarray([bool(s[1]) for s in single], np.bool_))
    meta[f"{split}_pairs"], meta[f"{split}_unpaired"] = len(pairs), len(single)
    meta[f"{split}_tokens"] = int(sum(len(ids) for p in pairs for ids, _ in p) + sum(len(s[0][0]) for s in single))


def _rl_prompts(config: RunConfig, log: Log) -> tuple[list[Any], list[Any], str]:
    """(training, validation) prompts of an RL run, and where they came from."""
    from llmkit.data import prompts as prompts_
    from llmkit.data.sources import example_rows

    d = config.data
    if d.prompts_path:
        found = list(prompts_.prompts_of(example_rows(d.prompts_path, d, "data.prompts_path", "prompts")))
        train, val = _split_examples(found, d.val_fraction, "prompts")
        return train, val, d.prompts_path
    if d.source != "embedded":
        raise UsageError("train.task is rl but data.prompts_path is not set", "",
                         "set data.prompts_path to a JSONL file of prompts (or a dataset), or use data.source: "
                         "embedded for questions about the embedded documentation")
    train, val = prompts_.embedded_prompts(d.val_fraction, config.train.seed)
    log(f"rl: {len(train)} training and {len(val)} validation prompts made from the embedded documentation "
        "(the statement's name as `answer`; validation on other statements)")
    return train, val, "embedded"


def _copy_reward_files(config: RunConfig, out: Path) -> dict[str, str]:
    """Copy train.rl.reward_files into ``out``/rewards/; their sha256 by file name."""
    import hashlib

    hashes: dict[str, str] = {}
    for name in config.train.rl.reward_files:
        src = Path(name).expanduser()
        if src.suffix != ".py" or not src.is_file():
            raise UsageError(f"train.rl.reward_files: {name} is not a Python file", "",
                             "name .py files that define the reward functions")
        if src.name in hashes:
            raise UsageError(f"train.rl.reward_files names two files called {src.name}", "",
                             "give the reward files distinct names")
        data = src.read_bytes()
        (out / "rewards").mkdir(parents=True, exist_ok=True)
        crypto.write_bytes(out / "rewards" / src.name, data)
        hashes[src.name] = hashlib.sha256(data).hexdigest()
    return hashes


def prepare_rl(config: RunConfig, tok: Any, out: Path, log: Log, strict: bool = False) -> dict[str, Any]:
    """Render the prompts into data/rl/{train,val}.jsonl (token ids, text, the example) and copy
    the reward files into data/rl/rewards/. Prompts that leave no room for train.rl.max_new_tokens
    in train.sequence_length_tokens are dropped and counted (``strict``: an error)."""
    from llmkit.data import prompts as prompts_

    train, val, source = _rl_prompts(config, log)
    scrub = pii_filter(config)
    room = config.train.sequence_length_tokens + 1 - config.train.rl.max_new_tokens
    if room < 1:
        raise UsageError(f"train.rl.max_new_tokens {config.train.rl.max_new_tokens} leaves no room for a prompt in "
                         f"train.sequence_length_tokens {config.train.sequence_length_tokens}", "",
                         "raise sequence_length_tokens or lower max_new_tokens")
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    too_long: list[str] = []
    for split, found in (("train", train), ("val", val)):
        for i, p in enumerate(found):
            if scrub is not None:
                texts = scrub.example(i, [m["content"] for m in p.messages])
                if texts is None:
                    continue
                p = prompts_.Prompt(p.where, [{**m, "content": t} for m, t in zip(p.messages, texts)], p.example)
            ids, text = prompts_.render(tok, p)
            if len(ids) > room:
                too_long.append(p.where)
                continue
            rows[split].append({"where": p.where, "prompt_ids": ids, "prompt": text, "example": p.example})
    if too_long:
        log(f"rl: dropped {len(too_long)} prompt(s) longer than {room} tokens (sequence_length_tokens + 1 - "
            f"max_new_tokens): {'; '.join(too_long[:3])}" + (" ..." if len(too_long) > 3 else ""))
        if strict:
            raise UsageError(f"--strict: {len(too_long)} prompt(s) would be dropped as too long", too_long[0],
                             "shorten them, or raise train.sequence_length_tokens")
    if not rows["train"] or not rows["val"]:
        raise UsageError(f"the RL data has {len(rows['train'])} training and {len(rows['val'])} validation prompts",
                         "training and validation each need prompts", "add prompts, or see the drops above")
    meta: dict[str, Any] = {"format": "llmkit-rl-v1", "source": source, "vocab_size": len(tok),
                            "pad_id": int(tok.pad_token_id if tok.pad_token_id is not None else eos_id(tok)),
                            "train_prompts": len(rows["train"]), "val_prompts": len(rows["val"]),
                            "dropped_too_long": len(too_long),
                            "tokenizer_sha256": tokenizer_hash(RunDir(out.parent.parent).tokenizer),
                            "pii": finish_pii(scrub, RunDir(out.parent.parent), source, log)}
    with staged_dir(out) as tmp:
        meta["reward_files"] = _copy_reward_files(config, tmp)
        for split in ("train", "val"):
            crypto.write_text(tmp / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows[split]))
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
    log(f"rl: {meta['train_prompts']} training and {meta['val_prompts']} validation prompts from {source}")
    return meta


def prepare(config: RunConfig, run_dir: str | Path | None = None, retrain_tokenizer: bool = False,
            log: Log = lambda _: None, strict: bool = False, ctx: RunContext | None = None) -> PrepareResult:
    """Make the run directory's tokenizer and the data the config's task trains on (``strict``:
    SFT examples that fail the data checks are an error). ``ctx``: the run context (default: the
    config's, where a configured key that is not set stops here)."""
    run = RunDir.of(config, run_dir)
    ctx = ctx if ctx is not None else run_context(config, strict=True)
    with ctx.open_run(run.root, log):
        if ctx.key is not None:
            log(f"encryption: on (AES-256-GCM, key id {ctx.key.id_hex} from ${ctx.key.env}): data, tokenizer sealed")
        return _prepare(config, run, retrain_tokenizer, log, strict)


def _prepare(config: RunConfig, run: RunDir, retrain_tokenizer: bool, log: Log, strict: bool) -> PrepareResult:
    start = time.monotonic()
    tok, trained = ensure_tokenizer(config, run.tokenizer, retrain_tokenizer, log)
    result = PrepareResult(run.root, len(tok), trained)
    task = config.train.task
    out = run.task_data(task)
    if task == "pretrain":
        result.outputs["pretrain"] = prepare_pretrain(config, tok, out, log).model_dump()
    elif task == "sft":
        result.outputs["sft"] = prepare_sft(config, tok, out, log, strict)
    elif task == "preference":
        result.outputs["preference"] = prepare_preference(config, tok, out, log, strict)
    elif task == "rl":
        result.outputs["rl"] = prepare_rl(config, tok, out, log, strict)
    else:
        result.outputs["classify"] = prepare_classify(config, tok, out, log)
    result.seconds = time.monotonic() - start
    return result
