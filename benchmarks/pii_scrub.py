"""PII detection: recall and precision per type on a generated, labelled set; false positives on the
embedded corpus; and what scrubbing costs `prepare`.

The labelled set: documents of ordinary prose (Python's documentation) with known PII inserted in
several formats and national conventions (US/UK/German/French phone numbers, IBANs of several
countries, cards of several networks with spaces or dashes, IPv4/IPv6, credentials of several
kinds). Every inserted value is generated valid (checksums right); nothing else in the text is
labelled, so any other finding counts against precision.

    python benchmarks/pii_scrub.py [--documents 2000] [--seed 0]

Targets (issue #17): recall >= 0.99 on every structured type; <= 1 false positive per 100,000
tokens of the embedded corpus (counted with the 4096-token BPE `prepare` trains on it; no
tokenizer is downloaded). Prints the CPU it ran on.
"""

from __future__ import annotations

import argparse
import platform
import random
import string
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from llmkit.data.corpus import embedded_topics
from llmkit.privacy.pii import NER_TYPES, TYPES, Scrubber


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        digits = body + check
        total = sum((d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 else d
                    for i, d in enumerate(int(c) for c in reversed(digits)))
        if total % 10 == 0:
            return digits
    raise AssertionError


def _iban(country: str, length: int, rng: random.Random, letters: bool = False) -> str:
    bban = "".join(rng.choice(string.ascii_uppercase if letters and i < 4 else string.digits) for i in range(length - 4))
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bban}"


def _grouped(s: str, size: int, sep: str) -> str:
    return sep.join(s[i:i + size] for i in range(0, len(s), size))


def generators(rng: random.Random) -> dict[str, list]:  # type: ignore[type-arg]
    r = rng

    def us_phone() -> str:
        area, mid, last = r.choice(["415", "212", "617", "303", "206"]), r.randint(200, 999), r.randint(0, 9999)
        return r.choice([f"({area}) {mid}-{last:04d}", f"{area}-{mid}-{last:04d}", f"{area}.{mid}.{last:04d}",
                         f"+1 {area} {mid} {last:04d}", f"+1-{area}-{mid}-{last:04d}"])

    return {
        "EMAIL": [lambda: f"{r.choice(['jane', 'j.doe', 'max_muster', 'li.wei', 'o.connor'])}{r.randint(1, 999)}@"
                          f"{r.choice(['example.com', 'mail.example.org', 'uni-example.de', 'example.co.uk'])}"],
        "PHONE": [us_phone, lambda: f"+44 20 7946 {r.randint(0, 9999):04d}",
                  lambda: f"+49 30 {r.randint(20000000, 99999999)}", lambda: f"+33 1 {r.randint(10, 99)} {r.randint(10, 99)} "
                  f"{r.randint(10, 99)} {r.randint(10, 99)}"],
        "CARD": [lambda: _grouped(_luhn_complete("4", 16, r), 4, r.choice([" ", "-", ""])),
                 lambda: _grouped(_luhn_complete(r.choice(["51", "52", "55"]), 16, r), 4, r.choice([" ", "-", ""])),
                 lambda: _luhn_complete(r.choice(["34", "37"]), 15, r)],
        "IBAN": [lambda: _grouped(_iban("DE", 22, r), 4, r.choice([" ", ""])),
                 lambda: _iban("GB", 22, r, letters=True), lambda: _grouped(_iban("FR", 27, r), 4, " "),
                 lambda: _iban("NL", 18, r, letters=True)],
        "IP_ADDRESS": [lambda: ".".join(str(r.randint(1, 254)) for _ in range(4)),
                       lambda: ":".join(f"{r.randint(0, 65535):x}" for _ in range(8)),
                       lambda: f"2001:db8::{r.randint(1, 65535):x}:{r.randint(1, 65535):x}"],
        "SSN": [lambda: f"{r.randint(1, 665):03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"],
        "CREDENTIAL": [lambda: "AKIA" + "".join(r.choice(string.ascii_uppercase + string.digits) for _ in range(16)),
                       lambda: "ghp_" + "".join(r.choice(string.ascii_letters + string.digits) for _ in range(36)),
                       lambda: "xoxb-" + "-".join(str(r.randint(10**9, 10**10)) for _ in range(2)) + "-abcDEFghi",
                       lambda: f"https://admin:{r.randint(10**5, 10**9)}pw@db{r.randint(1, 9)}.example.com"],
        "URL_USERINFO": [lambda: f"ssh://git{r.randint(1, 99)}@git.example.com"],
    }


def labelled_set(n: int, seed: int) -> list[tuple[str, list[tuple[int, int, str]]]]:
    rng = random.Random(seed)
    gens = generators(rng)
    paragraphs = [p.strip() for _, t in embedded_topics() for p in t.split("\n\n") if len(p.strip()) > 80]
    docs = []
    for _ in range(n):
        text, spans = rng.choice(paragraphs), []
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(list(gens))
            value = rng.choice(gens[kind])()
            lead = rng.choice([" Contact: ", " (see ", "\nReach us at ", " — ", " "])
            text = text + lead
            spans.append((len(text), len(text) + len(value), kind))
            text += value + rng.choice([".", ")", " today.", ",", "\n"])
        docs.append((text, spans))
    return docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--documents", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    print(f"CPU: {cpu}; python {platform.python_version()}")

    scrubber = Scrubber()
    tp, fn, fp = Counter(), Counter(), Counter()
    for text, spans in labelled_set(args.documents, args.seed):
        found = {(f.start, f.end, f.type) for f in scrubber.scan(text)}
        truth = set(spans)
        for s in truth:
            (tp if s in found else fn)[s[2]] += 1
        for f in found - truth:
            fp[f[2]] += 1
    print(f"\nlabelled set: {args.documents} documents (seed {args.seed})")
    print(f"{'type':13} {'inserted':>8} {'recall':>7} {'precision':>9}")
    worst = 1.0
    for kind in [t for t in TYPES if t not in NER_TYPES.values()]:  # the structured types (names need a model)
        n = tp[kind] + fn[kind]
        recall = tp[kind] / n if n else float("nan")
        precision = tp[kind] / (tp[kind] + fp[kind]) if tp[kind] + fp[kind] else float("nan")
        worst = min(worst, recall) if n else worst
        print(f"{kind:13} {n:8d} {recall:7.4f} {precision:9.4f}")
    print(f"lowest recall {worst:.4f} (target >= 0.99)")

    from llmkit.config.load import validate_config
    from llmkit.data.prepare import prepare

    def timed(pii: str) -> tuple[float, int]:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = validate_config({"name": f"pii-{pii}", "runs_root": tmp, "privacy": {"pii": pii},
                                   "train": {"max_steps": 1}, "tokenizer": {"vocab_size": 4096}})
            t0 = time.perf_counter()
            meta = prepare(cfg).outputs["pretrain"]
            return time.perf_counter() - t0, meta["train_tokens"] + meta["val_tokens"]

    timed("off")  # warm caches
    base, n_tok = timed("off")
    scrub, _ = timed("redact")
    docs = [t for _, t in embedded_topics()]
    clean = Scrubber()
    false = [f.type for d in docs for f in clean.scan(d)]
    print(f"\nembedded corpus: {n_tok:,} tokens, {len(false)} findings "
          f"= {len(false) / n_tok * 1e5:.2f} per 100,000 tokens (target <= 1): {dict(Counter(false)) or 'none'}")
    print(f"prepare on the embedded corpus (tokenizer training included): off {base:.2f} s "
          f"({n_tok / base:,.0f} tokens/s), redact {scrub:.2f} s ({n_tok / scrub:,.0f} tokens/s): "
          f"{scrub / base:.2f}x the time (scrubbing runs twice: for the tokenizer and for the shards)")
    sys.exit(0)


if __name__ == "__main__":
    main()
