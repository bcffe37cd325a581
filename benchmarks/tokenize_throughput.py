"""Tokenization throughput: llmkit's prepare pipeline vs the bare `tokenizers` library.

Builds a ~20 MB corpus (the embedded Python documentation plus the standard library's
top-level sources, repeated) as a JSONL file, trains the tiny preset's tokenizer once, then in
the same process and interleaved:

- bare ``Tokenizer.encode_batch`` over the documents already in memory (the issue's baseline),
  and ``encode_batch_fast`` (the strictest bare `tokenizers` baseline: no offsets);
- bare tiktoken ``encode_ordinary_batch`` with the same tokenizer's ranks (the engine llmkit's
  pipeline uses when it gives the same ids, ``llmkit.data.fastbpe``): the pipeline's own overhead;
- llmkit's pipeline, ``prepare_pretrain``: read the file, tokenize, split, write the shards.

Then peak RSS of ``llmkit prepare`` (a fresh subprocess each) on the 20 MB corpus and on one
5x larger, to show memory stays bounded as the corpus grows.

Usage: python benchmarks/tokenize_throughput.py [--mb 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from llmkit.config.load import validate_config
from llmkit.config.presets import load_preset
from llmkit.data.corpus import embedded_topics, iter_documents
from llmkit.data.fastbpe import bulk_encoder
from llmkit.data.prepare import ensure_tokenizer, prepare_pretrain


def build_corpus(path: Path, target_bytes: int) -> int:
    """Write a JSONL corpus of about ``target_bytes``; returns the documents written."""
    docs = [text for _, text in embedded_topics()]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs += [p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("*.py"))]
    written = count = 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < target_bytes:
            for doc in docs:
                fh.write(json.dumps({"text": doc}) + "\n")
                written += len(doc.encode())
                count += 1
                if written >= target_bytes:
                    break
    return count


def config_for(corpus: Path, runs: Path):  # type: ignore[no-untyped-def]
    data = load_preset("tiny")
    data["runs_root"] = str(runs)
    data["data"] = {"source": "jsonl", "path": str(corpus)}
    return validate_config(data)


def peak_rss_mb(config_path: Path, run_dir: Path) -> float:
    """Peak RSS of `llmkit prepare` in a fresh process (VmHWM: ru_maxrss survives exec)."""
    code = (
        "import resource, sys\n"
        "from llmkit.cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print('RSS', int(hwm.split()[1]) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, "prepare", "--config", str(config_path),
                          "--run-dir", str(run_dir)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1].split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        corpus = tmp / "corpus.jsonl"
        n_docs = build_corpus(corpus, int(args.mb * 1e6))
        cfg = config_for(corpus, tmp / "runs")
        run_dir = tmp / "runs" / "bench"
        tok, _ = ensure_tokenizer(cfg, run_dir / "tokenizer", False, lambda _: None)
        backend = tok.backend_tokenizer
        docs = list(iter_documents(cfg.data))
        print(f"corpus: {corpus.stat().st_size / 1e6:.1f} MB JSONL, {n_docs} documents, "
              f"tokenizer {len(tok)} tokens")

        def bare(method: str) -> tuple[float, int]:
            fn = getattr(backend, method)
            t0 = time.perf_counter()
            n = 0
            for i in range(0, len(docs), 1000):
                n += sum(len(e) for e in fn(docs[i : i + 1000], add_special_tokens=False))
            return time.perf_counter() - t0, n

        def pipeline() -> tuple[float, int]:
            t0 = time.perf_counter()
            meta = prepare_pretrain(cfg, tok, run_dir / "data", lambda _: None)
            # the pipeline also writes an EOS per document; count only text tokens, like bare
            return time.perf_counter() - t0, meta.train_tokens + meta.val_tokens - n_docs

        fast = bulk_encoder(backend)
        assert fast is not None, "the benchmark tokenizer should be tiktoken-compatible"

        def bare_tiktoken() -> tuple[float, int]:
            t0 = time.perf_counter()
            n = 0
            for i in range(0, len(docs), 1000):
                n += sum(len(ids) for ids in fast(docs[i : i + 1000]))
            return time.perf_counter() - t0, n

        rates: dict[str, list[float]] = {"encode_batch": [], "encode_batch_fast": [], "tiktoken (bare)": [],
                                         "llmkit prepare": []}
        for _ in range(args.repeats):  # interleaved, so machine noise hits all alike
            for name, fn in (("encode_batch", lambda: bare("encode_batch")),
                             ("encode_batch_fast", lambda: bare("encode_batch_fast")),
                             ("tiktoken (bare)", bare_tiktoken),
                             ("llmkit prepare", pipeline)):
                seconds, tokens = fn()
                rates[name].append(tokens / seconds)
        print(f"{'method':20} {'median M tok/s':>15} {'best M tok/s':>13}")
        for name, r in rates.items():
            print(f"{name:20} {statistics.median(r) / 1e6:15.2f} {max(r) / 1e6:13.2f}")
        ours = statistics.median(rates["llmkit prepare"])
        for base in ("encode_batch", "encode_batch_fast", "tiktoken (bare)"):
            print(f"ratio llmkit / bare {base}: {ours / statistics.median(rates[base]):.2f}x")
        meta = json.loads((run_dir / "data" / "meta.json").read_text())
        print(f"engine used by llmkit prepare: {meta['encoder']}")
        print(f"tokens: {tokens:,}; this process's peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
              "(holds the corpus in memory for the bare baseline)")

        big = tmp / "corpus5x.jsonl"
        build_corpus(big, int(args.mb * 5e6))
        for label, path in (("1x", corpus), ("5x", big)):
            cfg_path = tmp / f"run-{label}.yaml"
            cfg_path.write_text(json.dumps({**cfg.model_dump(mode="json"), "data": {"source": "jsonl", "path": str(path)}}))
            target = tmp / "runs" / f"rss-{label}"
            shutil.copytree(run_dir / "tokenizer", target / "tokenizer")  # measure tokenizing only
            rss = peak_rss_mb(cfg_path, target)
            print(f"peak RSS of `llmkit prepare` on the {label} corpus ({path.stat().st_size / 1e6:.0f} MB): {rss:.0f} MB")


if __name__ == "__main__":
    main()
