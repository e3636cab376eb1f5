"""The data stage: jsonl rows -> validated records -> labelled, packed token rows, plus a report.

Read files in the order the data flows: records (read + validate), hygiene (dedup, leakage),
pii (Presidio, offline), chat (template, labels, truncation), packing (rows and batches),
cache, prepare (the whole stage in one call). Preference pairs (train.method: dpo): pair_rows
(read + validate), pairs (clean, tokenize, prepare_pairs).
"""

from loraforge.data.chat import (
    RowTooLong,
    render_chat,
    render_marked,
    resolve_chat_template,
    template_sha256,
    tokenize_record,
    truncate_example,
)
from loraforge.data.packing import (
    collate_packed,
    collate_padded,
    count_loss_tokens,
    pack_examples,
    pack_rows,
    packing_efficiency,
    summed_token_loss,
)
from loraforge.data.pair_rows import PairReadResult, read_pairs
from loraforge.data.pairs import (
    PairDropped,
    PairHygiene,
    clean_pairs,
    encode_pairs,
    fit_pair,
    prepare_pairs,
    tokenize_pair,
)
from loraforge.data.prepare import DATA_CACHE_SUBDIR, REPORT_NAME, prepare_data, write_data_report
from loraforge.data.records import ReadResult, read_records
from loraforge.data.types import (
    IGNORE_INDEX,
    PackedSequence,
    PairRecord,
    PreparedData,
    PreparedPairs,
    Record,
    TokenizedExample,
    TokenizedPair,
)

__all__ = [
    "IGNORE_INDEX",
    "REPORT_NAME",
    "PackedSequence",
    "PairDropped",
    "PairHygiene",
    "PairReadResult",
    "PairRecord",
    "PreparedData",
    "PreparedPairs",
    "ReadResult",
    "Record",
    "RowTooLong",
    "TokenizedExample",
    "TokenizedPair",
    "clean_pairs",
    "collate_packed",
    "collate_padded",
    "count_loss_tokens",
    "encode_pairs",
    "fit_pair",
    "pack_examples",
    "pack_rows",
    "packing_efficiency",
    "prepare_data",
    "prepare_pairs",
    "DATA_CACHE_SUBDIR",
    "read_pairs",
    "read_records",
    "render_chat",
    "render_marked",
    "resolve_chat_template",
    "summed_token_loss",
    "template_sha256",
    "tokenize_pair",
    "tokenize_record",
    "truncate_example",
    "write_data_report",
]
