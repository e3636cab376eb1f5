"""PII detection and redaction with Presidio, fully offline.

Pattern recognizers (email, phone, credit card, IBAN, IP, US SSN) run on a blank spaCy pipeline,
so no model is downloaded; names (NER) are detected only when `data.pii_ner_model` points at a
local spaCy model directory. tldextract, which the email recognizer uses to validate domains,
would fetch the public suffix list over the network; here it reads the snapshot bundled with it.
A cheap regex pre-filter skips rows that cannot hold a pattern entity, so most rows never reach
Presidio.
"""

from __future__ import annotations

import re
from collections import Counter
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

_BARE_SHORT_NUMBER = re.compile(r"\d{1,9}")


@dataclass
class PiiResult:
    records: list[Record]
    counts: dict[str, int] = field(default_factory=dict)  # entity type -> occurrences
    rows_with_pii: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)  # line + entity types, never the PII itself


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
        return list(self.analyzer.analyze(text=text, language="en", entities=self.entities))

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


def _id_aware_phone_recognizer() -> Any:
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class IdAwarePhoneRecognizer(PhoneRecognizer):  # type: ignore[misc]
        """phonenumbers accepts any bare 8-9 digit run as a local number (DE, FR, BR plans), which
        flags order, invoice and account numbers; a bare run that short is far more often an id."""

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            found = super().analyze(text, entities, nlp_artifacts)
            return [r for r in found if not _BARE_SHORT_NUMBER.fullmatch(text[r.start : r.end])]

    return IdAwarePhoneRecognizer()


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
        _id_aware_phone_recognizer(),
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


def scan_records(records: list[Record], scanner: PiiScanner, *, redact: bool) -> PiiResult:
    """Count PII by type in every row; with `redact`, return rows with each finding replaced."""
    counts: Counter[str] = Counter()
    result = PiiResult(records=[])
    for record in records:
        texts = _record_texts(record)
        found = [scanner.find(text) for text in texts]
        types = sorted({f.entity_type for hits in found for f in hits})
        if types:
            result.rows_with_pii += 1
            counts.update(f.entity_type for hits in found for f in hits)
            if len(result.examples) < MAX_EXAMPLES:
                result.examples.append({"line": record.line, "entities": types})
            if redact:
                record = _with_texts(
                    record, [scanner.redact(t, h) if h else t for t, h in zip(texts, found, strict=True)]
                )
        result.records.append(record)
    result.counts = dict(sorted(counts.items()))
    return result
