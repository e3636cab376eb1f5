"""The data stage: jsonl rows -> validated records -> labelled, packed token rows, plus a report.

Read files in the order the data flows: records (read + validate), hygiene (dedup, leakage),
pii (Presidio, offline), chat (template, labels, truncation), packing (rows and batches),
cache, prepare (the whole stage in one call).
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
from loraforge.data.prepare import DATA_CACHE_SUBDIR, REPORT_NAME, prepare_data, write_data_report
from loraforge.data.records import ReadResult, read_records
from loraforge.data.types import IGNORE_INDEX, PackedSequence, PreparedData, Record, TokenizedExample

__all__ = [
    "IGNORE_INDEX",
    "REPORT_NAME",
    "PackedSequence",
    "PreparedData",
    "ReadResult",
    "Record",
    "RowTooLong",
    "TokenizedExample",
    "collate_packed",
    "collate_padded",
    "count_loss_tokens",
    "pack_examples",
    "pack_rows",
    "packing_efficiency",
    "prepare_data",
    "DATA_CACHE_SUBDIR",
    "read_records",
    "render_chat",
    "render_marked",
    "resolve_chat_template",
    "summed_token_loss",
    "template_sha256",
    "tokenize_record",
    "truncate_example",
    "write_data_report",
]
