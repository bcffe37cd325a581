"""PII detectors: each type found in the formats people write it, checksums enforced, look-alikes
left alone, and the embedded corpus (Python's documentation) free of false positives."""

from __future__ import annotations

import pytest

from llmkit.privacy.pii import PiiFilter, Scrubber, iban_ok, luhn_ok

pytest.importorskip("phonenumbers")

FOUND = [
    ("EMAIL", "jane.doe+news@example.co.uk"), ("EMAIL", "x_y@sub.domain.org"),
    ("PHONE", "(415) 555-0132"), ("PHONE", "415-555-0132"), ("PHONE", "+44 20 7946 0958"), ("PHONE", "+49 30 901820"),
    ("PHONE", "+33 1 42 68 53 00"),
    ("CARD", "4111 1111 1111 1111"), ("CARD", "5500-0000-0000-0004"), ("CARD", "378282246310005"),
    ("IBAN", "DE89 3704 0044 0532 0130 00"), ("IBAN", "GB82WEST12345698765432"), ("IBAN", "FR1420041010050500013M02606"),
    ("IP_ADDRESS", "192.168.1.20"), ("IP_ADDRESS", "2001:db8:85a3::8a2e:370:7334"),
    ("SSN", "123-45-6789"),
    ("CREDENTIAL", "AKIAIOSFODNN7EXAMPLE"), ("CREDENTIAL", "ghp_" + "a1B2" * 9),
    ("CREDENTIAL", "xoxb-1234567890-abcdefghij"),
    ("CREDENTIAL", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    ("CREDENTIAL", "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"),
    ("CREDENTIAL", "https://bob:hunter2@db.example.com"), ("URL_USERINFO", "ftp://alice@files.example.org"),
]
NOT_PII = ["a[1::2]", "12:30:45", "v1.2.3.4", "3.14159", "4111 1111 1111 1112", "DE89 3704 0044 0532 0130 01",
           "000-12-3456", "version 2147483647", "x == y", "user@localhost", "0x7fffffff", "2024-11-29",
           "1,000,000", "ISBN 978-3-16-148410-0"]


@pytest.fixture(scope="module")
def scrubber() -> Scrubber:
    return Scrubber()


@pytest.mark.parametrize(("kind", "value"), FOUND)
def test_each_type_is_found_in_a_sentence(scrubber: Scrubber, kind: str, value: str) -> None:
    text = f"Contact: {value} (sent yesterday)."
    found = scrubber.scan(text)
    assert [(f.type, text[f.start:f.end]) for f in found] == [(kind, value)]
    assert scrubber.redact(text, found) == f"Contact: <{kind}> (sent yesterday)."


@pytest.mark.parametrize("text", NOT_PII)
def test_look_alikes_are_left_alone(scrubber: Scrubber, text: str) -> None:
    assert scrubber.scan(f"The value {text} appears here.") == []


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE89 3704 0044 0532 0130 01")
    assert not iban_ok("DE89 3704 0044 0532 0130")  # the wrong length for Germany


def test_the_embedded_corpus_has_no_false_positives() -> None:
    from llmkit.data.corpus import embedded_topics

    s = Scrubber()
    found = [(f.type, doc[f.start:f.end]) for _, doc in embedded_topics() for f in s.scan(doc)]
    assert found == []


def test_filter_modes() -> None:
    docs = ["no pii here", "write to a@b.example.com\nor call (415) 555-0132", "also clean"]
    report = PiiFilter("report", Scrubber())
    assert list(report(docs)) == docs
    assert report.locations == [{"document": 1, "line": 1, "type": "EMAIL"}, {"document": 1, "line": 2, "type": "PHONE"}]
    redact = PiiFilter("redact", Scrubber())
    assert list(redact(docs))[1] == "write to <EMAIL>\nor call <PHONE>"
    drop = PiiFilter("drop_document", Scrubber())
    assert list(drop(docs)) == ["no pii here", "also clean"] and drop.summary()["documents_dropped"] == 1
    assert drop.summary()["counts"]["EMAIL"] == 1
    ex = PiiFilter("redact", Scrubber()).example(0, ["hi", "my card is 4111 1111 1111 1111"])
    assert ex == ["hi", "my card is <CARD>"]


def test_recall_on_the_generated_labelled_set() -> None:
    """The benchmark's labelled set (benchmarks/pii_scrub.py), smaller: recall >= 0.99 and precision
    >= 0.99 on every type."""
    import importlib.util
    from collections import Counter
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "pii_scrub.py"
    spec = importlib.util.spec_from_file_location("pii_scrub", path)
    bench = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    s = Scrubber()
    tp, fn, fp = Counter(), Counter(), Counter()
    for text, spans in bench.labelled_set(600, seed=1):
        found = {(f.start, f.end, f.type) for f in s.scan(text)}
        for span in spans:
            (tp if span in found else fn)[span[2]] += 1
        for f in found - set(spans):
            fp[f[2]] += 1
    for kind in tp | fn:
        assert tp[kind] / (tp[kind] + fn[kind]) >= 0.99, (kind, tp[kind], fn[kind])
        assert tp[kind] / (tp[kind] + fp[kind]) >= 0.99, (kind, tp[kind], fp[kind])
