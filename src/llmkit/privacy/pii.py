"""PII detection and redaction for `prepare` (``privacy.pii``).

Structured types only, each found by a pattern and, where the type has one, confirmed by its
checksum or parser, so that numbers which merely look right are not taken:

- ``EMAIL`` addresses; ``URL_USERINFO``: URLs that carry a user name (``scheme://user@host``);
- ``PHONE``: numbers ``phonenumbers`` (Google's libphonenumber) parses as valid, international
  (``+44 20 ...``) or in the national formats of ``regions``, written with a ``+``, spaces,
  dashes, dots or parentheses (a bare run of digits is as often an id or a count: not taken);
- ``CARD``: 13-19 digit payment card numbers with a card network's prefix and a valid Luhn digit;
- ``IBAN``: a known country's length and a valid ISO 13616 mod-97 checksum;
- ``IP_ADDRESS``: IPv4 and IPv6 (validated by ``ipaddress``);
- ``SSN``: US social security numbers (AAA-GG-SSSS, without the never-issued areas);
- ``CREDENTIAL``: AWS access key ids, GitHub and Slack tokens, JWTs, private-key blocks and
  passwords in URLs.

Names and places (``NAME``, ``LOCATION``) need a named-entity model: with Microsoft Presidio and
a spaCy pipeline that is already installed (``load_ner``; never downloaded) they are found too;
without one, `prepare`'s summary and the report say they were not. Matched text is never logged
or written: reports hold the type and where it was.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.errors import EnvironmentProblem

PII_REPORT = "pii_report.jsonl"
TYPES = ("EMAIL", "PHONE", "CARD", "IBAN", "IP_ADDRESS", "SSN", "CREDENTIAL", "URL_USERINFO", "NAME", "LOCATION")
NER_TYPES = {"PERSON": "NAME", "LOCATION": "LOCATION"}  # Presidio's entities -> our types
NER_AUTO = ("en_core_web_lg", "en_core_web_md", "en_core_web_sm", "en_core_web_trf")
MODES = ("off", "report", "redact", "drop_document")

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}(?![\w-])")
_HOST = r"(?:[A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}(?::\d{1,5})?"  # a sentence's "." or ")" is not the host's
_URL_PASSWORD = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,15}://[^\s/@:]{1,128}:[^\s/@]{1,256}@" + _HOST)
_URL_USER = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,15}://[^\s/@:]{1,128}@" + _HOST)
_CREDENTIALS = [
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),  # AWS access key id
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b"),  # GitHub tokens
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,255}\b"),  # Slack tokens
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{10,}"),  # JWT
    re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]{0,20000}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----"),
]
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\d|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3})(?![\w:])")
# Written phone formats, each candidate confirmed by phonenumbers (its matcher alone skips a number
# followed by ") 5" and the like).
_PHONE_FORMS = re.compile(r"(?<![\w+])(?:\+\d{1,3}(?:[ .-]\(?\d{1,4}\)?){2,5}|(?:\(\d{3}\) ?|\d{3}[.-])\d{3}[.-]\d{4})(?![\w])")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
# ISO 13616 lengths of the countries whose IBANs are most common (a wrong length is not an IBAN).
_IBAN_LENGTH = {"AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20,
                "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IS": 26, "IT": 27,
                "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PL": 28, "PT": 25,
                "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26, "UA": 29, "SA": 24, "AE": 23, "IL": 23,
                "BR": 29, "QA": 29}
_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|6011|65|64[4-9]|35|30[0-5]|36|38|62)")


def luhn_ok(digits: str) -> bool:
    """The Luhn check digit of a card number is right."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    """A known country, its length, and the ISO 13616 mod-97 checksum."""
    iban = text.replace(" ", "").upper()
    if _IBAN_LENGTH.get(iban[:2]) != len(iban):
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _ipv6_ok(text: str) -> bool:
    groups = [g for g in text.split(":") if g]
    if len(groups) < 3 or not any(len(g) >= 3 or any(c in "abcdefABCDEF" for c in g) for g in groups):
        return False  # "a[1::2]" and "12:30:45" are not addresses
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Finding:
    start: int
    end: int
    type: str


@dataclass
class Scrubber:
    """Finds PII in text and redacts it; ``counts`` accumulates over every call of ``scan``."""

    regions: tuple[str, ...] = ("US",)
    counts: Counter = field(default_factory=Counter)
    ner: Any = None
    """A Presidio AnalyzerEngine for names and places (``load_ner``), or None."""

    def __post_init__(self) -> None:
        try:
            import phonenumbers
        except ImportError:
            raise EnvironmentProblem("privacy.pii needs the phonenumbers package", "phone numbers are found with it",
                                     "pip install 'llmkit[privacy]'") from None
        self._phonenumbers = phonenumbers

    def _find(self, text: str) -> list[Finding]:
        out: list[Finding] = []
        add = out.append
        for m in _URL_PASSWORD.finditer(text):
            add(Finding(m.start(), m.end(), "CREDENTIAL"))
        for m in _URL_USER.finditer(text):
            add(Finding(m.start(), m.end(), "URL_USERINFO"))
        for pattern in _CREDENTIALS:
            for m in pattern.finditer(text):
                add(Finding(m.start(), m.end(), "CREDENTIAL"))
        if "@" in text:
            for m in _EMAIL.finditer(text):
                add(Finding(m.start(), m.end(), "EMAIL"))
        for m in _IBAN.finditer(text):
            if iban_ok(m.group()):
                add(Finding(m.start(), m.end(), "IBAN"))
        for m in _CARD.finditer(text):
            digits = re.sub(r"[ -]", "", m.group())
            if 13 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) and luhn_ok(digits):
                add(Finding(m.start(), m.end(), "CARD"))
        for m in _SSN.finditer(text):
            add(Finding(m.start(), m.end(), "SSN"))
        for m in _IPV4.finditer(text):
            add(Finding(m.start(), m.end(), "IP_ADDRESS"))
        if "::" in text or text.count(":") >= 5:
            for m in _IPV6.finditer(text):
                if _ipv6_ok(m.group()):
                    add(Finding(m.start(), m.end(), "IP_ADDRESS"))
        pn = self._phonenumbers
        phones: list[Finding] = []
        for region in self.regions:
            for match in pn.PhoneNumberMatcher(text, region, leniency=pn.Leniency.VALID):
                if match.raw_string.isdigit():  # a bare run of digits is an id or a count as often as a phone
                    continue
                phones.append(Finding(match.start, match.end, "PHONE"))
        for m in _PHONE_FORMS.finditer(text):  # what the matcher passed over
            if any(m.start() < p.end and p.start < m.end() for p in phones):
                continue
            for region in self.regions:
                try:
                    number = pn.parse(m.group(), region)
                except pn.NumberParseException:
                    continue
                if pn.is_valid_number(number):
                    phones.append(Finding(m.start(), m.end(), "PHONE"))
                    break
        out += phones
        if self.ner is not None:
            for r in self.ner.analyze(text=text, language="en", entities=list(NER_TYPES)):
                add(Finding(r.start, r.end, NER_TYPES[r.entity_type]))
        return _resolve(out)

    def scan(self, text: str) -> list[Finding]:
        """Every finding in ``text``, in order, overlaps resolved (see ``_resolve``)."""
        found = self._find(text)
        self.counts.update(f.type for f in found)
        return found

    @staticmethod
    def redact(text: str, found: list[Finding]) -> str:
        """``text`` with each finding replaced by its typed placeholder (``<EMAIL>``, ``<PHONE>`` ...)."""
        parts, last = [], 0
        for f in found:
            parts += [text[last:f.start], f"<{f.type}>"]
            last = f.end
        return "".join(parts + [text[last:]])


_PRIORITY = {t: i for i, t in enumerate(("CREDENTIAL", "URL_USERINFO", "EMAIL", "IBAN", "CARD", "SSN", "IP_ADDRESS",
                                          "PHONE", "NAME", "LOCATION"))}


def _resolve(found: list[Finding]) -> list[Finding]:
    """Overlapping findings: the more specific type wins (a phone parse is the loosest), then the
    earlier, then the longer."""
    found.sort(key=lambda f: (_PRIORITY[f.type], f.start, -(f.end - f.start)))
    kept: list[Finding] = []
    for f in found:
        if not any(f.start < k.end and k.start < f.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


@dataclass
class PiiFilter:
    """Apply ``privacy.pii`` to a stream of documents: ``report`` passes them unchanged and records
    where PII was (document index, line, type); ``redact`` replaces it; ``drop_document`` leaves out
    every document that has any."""

    mode: str
    scrubber: Scrubber
    locations: list[dict[str, object]] = field(default_factory=list)
    documents_with_pii: int = 0
    dropped: int = 0
    max_locations: int = 1_000_000
    names: str = "not detected (privacy.ner_model is null)"
    """Whether names and places were looked for, and with what (for the output and the report)."""

    def __call__(self, documents: Iterable[str]) -> Iterator[str]:
        for index, doc in enumerate(documents):
            found = self.scrubber.scan(doc)
            if found:
                self.documents_with_pii += 1
                if self.mode == "report" and len(self.locations) < self.max_locations:
                    self.locations += [{"document": index, "line": line_of(doc, f.start), "type": f.type} for f in found]
            if not found or self.mode == "report":
                yield doc
            elif self.mode == "redact":
                yield self.scrubber.redact(doc, found)
            else:
                self.dropped += 1

    def example(self, index: int, texts: list[str]) -> list[str] | None:
        """One example of several texts (an SFT conversation's messages, a labelled row): the texts
        to keep (redacted in ``redact`` mode), or None when ``drop_document`` leaves it out."""
        found = [self.scrubber.scan(t) for t in texts]
        if not any(found):
            return texts
        self.documents_with_pii += 1
        if self.mode == "report":
            if len(self.locations) < self.max_locations:
                self.locations += [{"document": index, "part": j, "line": line_of(t, f.start), "type": f.type}
                                   for j, (t, fs) in enumerate(zip(texts, found)) for f in fs]
            return texts
        if self.mode == "drop_document":
            self.dropped += 1
            return None
        return [self.scrubber.redact(t, fs) for t, fs in zip(texts, found)]

    def describe(self) -> str:
        """One line for `prepare`'s output."""
        counts = ", ".join(f"{n} {t}" for t, n in self.scrubber.counts.most_common()) or "none found"
        action = {"report": "reported", "redact": "redacted", "drop_document": f"{self.dropped} document(s) dropped"}
        return (f"privacy: PII {counts} in {self.documents_with_pii} document(s), {action[self.mode]} "
                f"(names and places: {self.names})")

    def summary(self) -> dict[str, object]:
        return {"mode": self.mode, "counts": {t: self.scrubber.counts.get(t, 0) for t in TYPES},
                "documents_with_pii": self.documents_with_pii, "documents_dropped": self.dropped,
                "names_and_addresses": self.names}


def load_ner(model: str | None) -> tuple[Any, str]:
    """(a Presidio analyzer for PERSON and LOCATION, or None; what the report says about it).

    ``model``: ``auto`` (the first installed of ``NER_AUTO``), a spaCy package name, a local
    pipeline folder, or None (off). Nothing is ever downloaded: Presidio fetches a missing model
    by itself, so llmkit hands it only a model that is already here, and a recognizer registry of
    just the spaCy entity recognizer (no recognizer that looks up data online)."""
    if model is None:
        return None, "not detected (privacy.ner_model is null)"
    if model == "auto":  # look for a model before importing spaCy and Presidio (seconds)
        import importlib.util

        installed = [m for m in NER_AUTO if importlib.util.find_spec(m) is not None]
        if not installed:
            return None, ("not detected (no spaCy English model installed: install one of "
                          f"{', '.join(NER_AUTO)} as a package, with presidio-analyzer; llmkit never downloads one)")
    try:
        import spacy
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
        from presidio_analyzer.predefined_recognizers import SpacyRecognizer
    except ImportError:
        if model != "auto":
            raise EnvironmentProblem(f"privacy.ner_model is {model}, but Presidio is not installed",
                                     "names and places are found with presidio-analyzer and a spaCy model",
                                     "pip install 'llmkit[ner]' (and a spaCy English model)") from None
        return None, "not detected (install presidio-analyzer and a spaCy English model: pip install 'llmkit[ner]')"
    if model == "auto":
        found = next((m for m in NER_AUTO if spacy.util.is_package(m)), None)
        if found is None:
            return None, ("not detected (no spaCy English model installed: install one of "
                          f"{', '.join(NER_AUTO)} as a package; llmkit never downloads one)")
        model = found
    elif not (spacy.util.is_package(model) or Path(model).is_dir()):
        raise EnvironmentProblem(f"privacy.ner_model {model} is neither an installed spaCy package nor a folder",
                                 "llmkit never downloads models at run time",
                                 "install the model package (e.g. en_core_web_lg), or give the folder of a saved "
                                 "spaCy pipeline")
    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model}])
    engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.add_recognizer(SpacyRecognizer(supported_language="en", supported_entities=list(NER_TYPES)))
    analyzer = AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])
    return analyzer, f"detected with Presidio (spaCy {Path(model).name if Path(model).is_dir() else model})"
