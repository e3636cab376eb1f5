"""PII detection and redaction with Presidio, fully offline.

Pattern recognizers (email, phone, credit card, IBAN, IP, US SSN) run on a blank spaCy pipeline,
so no model is downloaded; names (NER) are detected only when `data.pii_ner_model` points at a
local spaCy model directory. tldextract, which the email recognizer uses to validate domains,
would fetch the public suffix list over the network; here it reads the snapshot bundled with it.
A cheap regex pre-filter skips rows that cannot hold a pattern entity, so most rows never reach
Presidio.

The recognizers are tuned against look-alikes (tests/data/pii_lookalikes.jsonl: dates, order ids,
versions, prices, times), because redacting one of those corrupts a row: phone numbers must be
grouped the way their country writes them, and a chat row whose answer repeats a value redacted
from its prompt (or the reverse) is dropped instead of kept with a prompt its answer no longer
matches (docs/data.md#pii).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loraforge.data.types import Record
from loraforge.errors import DataError

PATTERN_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN")
NER_ENTITIES = ("PERSON",)
MAX_EXAMPLES = 5
# Every pattern entity needs an "@" (email), a run of 7+ digits with separators (phone, card,
# IBAN, SSN, IPv4) or hex groups with colons (IPv6). Text without any of them cannot match.
_CANDIDATE = re.compile(r"@|\d[\d\s().\-/+]{5,}\d|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{0,4}:")

# Presidio's "very weak" patterns (US_SSN as 5-4 digits, which is a ZIP+4, or any bare 9 digits)
# score 0.05 and IPv6 "::" 0.1; every pattern worth redacting scores 0.3 or more (phone 0.4, a
# Luhn-valid card or checksummed IBAN 1.0).
MIN_SCORE = 0.3
# phonenumbers' EXACT_GROUPING: the digit groups must be the ones the number's own country formats
# it with, so 12.12.1953 (IL under VALID), 2024-118833 (US) or "85 000 - 95 000" (IN) no longer pass
PHONE_LENIENCY = 3
_BARE_DIGITS = re.compile(r"\d+")
BARE_PHONE_MIN_DIGITS = 10  # shorter bare runs are local numbers in DE, FR, BR plans, far more often ids
# a bare digit run carries no grouping to check, so it counts as a phone only after one of these
_PHONE_CONTEXT = re.compile(r"\b(?:phone|tel|telephone|mobile|cell|call|ring|fax|whatsapp|sms|text)\b", re.I)
PHONE_CONTEXT_CHARS = 40  # how far before a bare run a context word may stand
_ID_GLUE = re.compile(r"(?:[A-Za-z0-9]-|#)$")  # ORD-..., TCK-..., #4471920: the digits belong to an id


@dataclass
class PiiResult:
    records: list[Record]
    counts: dict[str, int] = field(default_factory=dict)  # entity type -> occurrences
    rows_with_pii: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)  # line + entity types, never the PII itself
    rows_by_recognizer: dict[str, int] = field(default_factory=dict)  # recognizer name -> rows it touched
    dropped: list[int] = field(default_factory=list)  # indexes into records: answer repeats a redacted value
    dropped_examples: list[dict[str, Any]] = field(default_factory=list)  # line + entity types

    def kept(self, start: int, stop: int) -> list[Record]:
        """records[start:stop] without the dropped rows."""
        gone = set(self.dropped)
        return [r for i, r in enumerate(self.records[start:stop], start) if i not in gone]


class PiiScanner:
    """Presidio analyzer + anonymizer configured to run without network or downloads."""

    def __init__(self, ner_model: Path | None = None) -> None:
        self.ner = ner_model is not None
        self.analyzer = _build_analyzer(ner_model)
        from presidio_anonymizer import AnonymizerEngine

        self.anonymizer = AnonymizerEngine()
        self.entities = [*PATTERN_ENTITIES, *(NER_ENTITIES if self.ner else ())]

    def find(self, text: str) -> list[Any]:
        if not self.ner and not _CANDIDATE.search(text):
            return []
        return list(self.analyzer.analyze(text=text, language="en", entities=self.entities, score_threshold=MIN_SCORE))

    def redact(self, text: str, found: list[Any]) -> str:
        """Replace each finding with its type, e.g. <EMAIL_ADDRESS>."""
        return str(self.anonymizer.anonymize(text=text, analyzer_results=found).text)


def _offline_email_recognizer() -> Any:
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    # suffix_list_urls=() and no cache dir: tldextract uses its bundled snapshot, never the network
    extractor = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):  # type: ignore[misc]
        def validate_result(self, pattern_text: str) -> bool:
            return bool(extractor(pattern_text).fqdn)

    return OfflineEmailRecognizer()


def _plausible_phone(text: str, start: int, end: int) -> bool:
    """A phonenumbers match that is not part of an id, and, when it is a bare digit run (no grouping
    to check), long enough and after a phone context word."""
    if _ID_GLUE.search(text[max(0, start - 2) : start]):
        return False
    if not _BARE_DIGITS.fullmatch(text[start:end]):
        return True
    before = text[max(0, start - PHONE_CONTEXT_CHARS) : start]
    return end - start >= BARE_PHONE_MIN_DIGITS and _PHONE_CONTEXT.search(before) is not None


def _plausible_phone_recognizer() -> Any:
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class PlausiblePhoneRecognizer(PhoneRecognizer):  # type: ignore[misc]
        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            found = super().analyze(text, entities, nlp_artifacts)
            return [r for r in found if _plausible_phone(text, r.start, r.end)]

    return PlausiblePhoneRecognizer(leniency=PHONE_LENIENCY)


def _build_analyzer(ner_model: Path | None) -> Any:
    import spacy
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        IbanRecognizer,
        IpRecognizer,
        SpacyRecognizer,
        UsSsnRecognizer,
    )

    if ner_model is not None and not (ner_model / "config.cfg").is_file():
        raise DataError(
            f"data.pii_ner_model: {ner_model} is not a spaCy model directory (no config.cfg); "
            "point it at a model saved with nlp.to_disk(), or remove it to use pattern recognizers only"
        )
    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": str(ner_model or "blank")}])
    # setting nlp directly: a loaded engine is never asked to resolve (or download) a model by name
    engine.nlp = {"en": spacy.load(ner_model) if ner_model is not None else spacy.blank("en")}  # type: ignore[assignment]
    registry = RecognizerRegistry(supported_languages=["en"])
    recognizers = [
        _offline_email_recognizer(),
        _plausible_phone_recognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
        UsSsnRecognizer(),
    ]
    if ner_model is not None:
        recognizers.append(SpacyRecognizer(supported_entities=list(NER_ENTITIES)))
    for recognizer in recognizers:
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


def _record_texts(record: Record) -> list[str]:
    return [record.text or ""] if record.kind == "text" else [m["content"] for m in record.messages]


def _with_texts(record: Record, texts: list[str]) -> Record:
    if record.kind == "text":
        return replace(record, text=texts[0])
    messages = tuple({"role": m["role"], "content": t} for m, t in zip(record.messages, texts, strict=True))
    return replace(record, messages=messages)


def _key(entity_type: str, value: str) -> str:
    """What two spellings of one value share: letters and digits, case-folded; for a phone number
    its national digits, so +1 (415) 555-0132 and 415.555.0132 are one value."""
    digits = re.sub(r"\D", "", value)
    if entity_type == "PHONE_NUMBER" and value.lstrip().startswith("+"):
        import phonenumbers

        try:
            return str(phonenumbers.parse(value).national_number)
        except phonenumbers.NumberParseException:
            return digits
    if entity_type == "PHONE_NUMBER":
        return digits.lstrip("0")  # the trunk prefix: 020 7946 0958 is +44 20 7946 0958
    return _alnum(value)


def _alnum(text: str) -> str:
    return re.sub(r"[\W_]", "", text).casefold()


def depends_on_redaction(record: Record, found: list[list[Any]]) -> bool:
    """True when a value redacted from the prompt side (system and user turns) also stands on the
    answer side (assistant turns), or the reverse: redacting it would leave an answer that copies a
    value its prompt no longer holds. `found` holds the findings of each turn. Text rows have no
    sides and never depend."""
    if record.kind == "text":
        return False
    texts = _record_texts(record)
    answer = [m["role"] == "assistant" for m in record.messages]
    for side in (True, False):
        other = [_alnum(t) for t, a in zip(texts, answer, strict=True) if a != side]
        for text, hits, a in zip(texts, found, answer, strict=True):
            keys = {_key(f.entity_type, text[f.start : f.end]) for f in hits} if a == side else set()
            if any(key and key in o for key in keys for o in other):
                return True
    return False


def scan_records(records: list[Record], scanner: PiiScanner, *, redact: bool) -> PiiResult:
    """Count PII by type and by recognizer in every row; with `redact`, return rows with each
    finding replaced, and list the rows whose answer depends on a redacted value as dropped."""
    counts: Counter[str] = Counter()
    by_recognizer: defaultdict[str, int] = defaultdict(int)
    result = PiiResult(records=[])
    for index, record in enumerate(records):
        texts = _record_texts(record)
        found = [scanner.find(text) for text in texts]
        types = sorted({f.entity_type for hits in found for f in hits})
        if types:
            result.rows_with_pii += 1
            counts.update(f.entity_type for hits in found for f in hits)
            for name in {f.recognition_metadata.get("recognizer_name", "?") for hits in found for f in hits}:
                by_recognizer[name] += 1
            if len(result.examples) < MAX_EXAMPLES:
                result.examples.append({"line": record.line, "entities": types})
            if redact and depends_on_redaction(record, found):
                result.dropped.append(index)
                if len(result.dropped_examples) < MAX_EXAMPLES:
                    result.dropped_examples.append({"line": record.line, "entities": types})
            if redact:
                record = _with_texts(
                    record, [scanner.redact(t, h) if h else t for t, h in zip(texts, found, strict=True)]
                )
        result.records.append(record)
    result.counts = dict(sorted(counts.items()))
    result.rows_by_recognizer = dict(sorted(by_recognizer.items()))
    return result
