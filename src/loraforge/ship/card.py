"""The model card (adapter/README.md): a Hugging Face card generated from the manifest, never by hand.

It is what an auditor reads: what the adapter is and which base it needs, the recipe, the data's
lineage and what hygiene removed, the gate's per-slice table and verdict, and how to load it in
PEFT and vLLM. Everything in it comes from loraforge.json, so `loraforge card DIR --check` can
tell whether a card still says what the manifest does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from loraforge.errors import ModelError
from loraforge.files import write_text_atomic
from loraforge.models import MANIFEST_FORMAT, MANIFEST_NAME, read_manifest

CARD_NAME = "README.md"
# vLLM's --max-lora-rank accepts only these; it must be at least the adapter's rank
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# why hygiene drops a row, by the reason data_report.json counts it under (docs/data.md)
DROP_REASONS = {
    "exact_duplicate": "the same conversation as an earlier row",
    "near_duplicate": "a near copy (MinHash Jaccard over data.near_dup_threshold) of an earlier row",
    "leaked": "a (near) copy of a golden row: training on it would inflate the gate",
    "eval_leaked": "an eval row that copies a golden row",
    "pii_dependent": "its answer repeats a redacted PII value, so redaction would teach a wrong answer",
    "answer_too_long": "the answer alone is longer than max_seq_len, so truncation would cut it",
    "no_trained_tokens": "no assistant tokens left to train on",
}
GENERATED_NOTE = "<!-- Generated from loraforge.json by loraforge (`loraforge card DIR`); edits are overwritten. -->"


def render_model_card(manifest: dict[str, Any]) -> str:
    """README.md for the adapter whose manifest this is (format 2): YAML front matter + sections."""
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ModelError(
            f"render_model_card(manifest=...): manifest format {manifest.get('format')!r} predates the model card "
            f"(format {MANIFEST_FORMAT} needed); train the adapter again with this loraforge"
        )
    sections = [
        _front_matter(manifest),
        GENERATED_NOTE,
        _what_it_is(manifest),
        _recipe(manifest),
        _lineage(manifest),
        _gate(manifest.get("eval")),
        _how_to_load(manifest),
        _verify(),
        _provenance(manifest),
    ]
    return "\n\n".join(section.rstrip("\n") for section in sections) + "\n"


def write_model_card(adapter_dir: Path) -> Path:
    """Write `adapter_dir`/README.md from its loraforge.json (atomically); returns the card's path."""
    path = adapter_dir / CARD_NAME
    write_text_atomic(path, render_model_card(_manifest_of(adapter_dir)))
    return path


def card_is_current(adapter_dir: Path) -> bool:
    """Whether `adapter_dir`/README.md is exactly what the manifest renders to."""
    path = adapter_dir / CARD_NAME
    expected = render_model_card(_manifest_of(adapter_dir))
    return path.is_file() and path.read_text(encoding="utf-8") == expected


def _manifest_of(adapter_dir: Path) -> dict[str, Any]:
    manifest = read_manifest(adapter_dir)
    if manifest is None:
        raise ModelError(
            f"{adapter_dir}: no {MANIFEST_NAME}, so there is nothing to write a model card from; "
            "pass an adapter directory that loraforge trained (OUTPUT/adapter)"
        )
    return manifest


def adapter_name(manifest: dict[str, Any]) -> str:
    """The run's name: the last part of config `output:` (runs/NAME)."""
    return Path(str(manifest["config"].get("output") or "adapter")).name or "adapter"


def base_model_id(manifest: dict[str, Any]) -> str | None:
    """The base's public id (base.hub_id); None for a local base, whose path means nothing elsewhere."""
    hub_id = manifest["base"].get("hub_id")
    return str(hub_id) if hub_id else None


def _front_matter(manifest: dict[str, Any]) -> str:
    meta: dict[str, Any] = {}
    if base_model_id(manifest):
        meta["base_model"] = base_model_id(manifest)
    meta["library_name"] = "peft"
    if manifest["base"].get("license"):
        meta["license"] = manifest["base"]["license"]
    tags = ["lora", "loraforge", str(manifest["lora"]["variant"]), "sft"]
    meta["tags"] = list(dict.fromkeys(tags))
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---"


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _what_it_is(manifest: dict[str, Any]) -> str:
    base, lora = manifest["base"], manifest["lora"]
    public = base_model_id(manifest)
    verdict = (manifest.get("eval") or {}).get("verdict", "not gated yet")
    named = f"`{public}` (config `base: {base['spec']}`)" if public else f"`{base['spec']}`"
    lines = [
        f"# {adapter_name(manifest)}",
        "",
        f"A {lora['variant']} adapter for {named}, trained with loraforge. Gate verdict: **{verdict}**.",
    ]
    if not public:
        lines += [
            "",
            "The base is a local model with no public id, so `base_model` is left out of the front matter; "
            "its fingerprint below is what identifies it.",
        ]
    rank = f"{lora['r']} / {lora['alpha']:g} (updates scaled by alpha/r = {lora['alpha'] / lora['r']:g})"
    rows: list[tuple[Any, ...]] = [
        ("base", named),
        ("base fingerprint", f"`{base['fingerprint']}` (weights, tokenizer and chat template; loraforge refuses "
                             "to load this adapter on any other base)"),
        ("base dtype in training", base["dtype"]),
        ("variant", lora["variant"]),
        ("rank r / alpha", rank),
        ("dropout", lora["dropout"]),
        ("target modules", ", ".join(lora["target_modules"])),
    ]  # fmt: skip
    if manifest.get("pissa_converted_to_lora"):
        rows.append(("export", f"PiSSA converted to plain LoRA for the original base (rank {2 * lora['r']})"))
    return "\n".join(lines) + "\n\n## What it is\n\n" + _table(("", ""), rows)


def _recipe(manifest: dict[str, Any]) -> str:
    train_cfg = manifest["config"].get("train") or {}
    data_cfg = manifest["config"].get("data") or {}
    run = manifest["training"]
    settings = ("epochs", "max_steps", "lr", "scheduler", "warmup_ratio", "weight_decay", "max_grad_norm",
                "precision", "replay_kl", "early_stopping_patience")  # fmt: skip
    rows: list[tuple[Any, ...]] = [(f"train.{key}", train_cfg[key]) for key in settings if key in train_cfg]
    rows += [
        ("step size", f"{run['micro_batch_size']} rows a forward x {run['grad_accum']} forwards "
                      f"= {run['examples_per_step']:g} examples a step"),
        ("data.max_seq_len", manifest["data"]["max_seq_len"]),
        ("data.packing", data_cfg.get("packing")),
        ("data.train_on", data_cfg.get("train_on")),
        ("seed", manifest["seed"]),
    ]  # fmt: skip
    losses = ", ".join(f"{e['step']}: {e['loss']:.4f}" for e in run["eval_losses"])
    result = [
        ("steps", f"{run['final_step']} of {run['total_steps']} ({run['stop_reason']})"),
        ("kept checkpoint", f"step {run['best_step']}, eval loss {run['best_eval_loss']:.4f} (the lowest)"),
        ("eval loss by step", losses or "-"),
        ("throughput", f"{run['tokens_per_second']:g} tokens/s, {run['wall_seconds']:g} s of training"),
    ]
    if run.get("resumed_from") is not None:
        result.append(("resumed", f"from the checkpoint at step {run['resumed_from']}"))
    return (
        "## Recipe\n\nThe settings that shape the adapter (the full resolved config is `config` in "
        f"{MANIFEST_NAME}):\n\n" + _table(("setting", "value"), rows)
        + "\n\nHow training went:\n\n" + _table(("", ""), result)
    )  # fmt: skip


def _lineage(manifest: dict[str, Any]) -> str:
    data = manifest["data"]
    rows = data["rows"]
    hashes: list[tuple[Any, ...]] = [
        (f"data.{name}", f"`{data[f'{name}_sha256']}`")
        for name in ("train", "eval", "golden", "replay")
        if data.get(f"{name}_sha256")
    ]
    hashes += [
        ("tokenized rows (ids and labels)", f"`{data['tokenized_sha256']}`"),
        ("chat template", f"`{manifest['chat_template']['sha256']}`"),
        ("tokenizer files", f"`{manifest['tokenizer']['sha256']}`"),
    ]
    counts: list[tuple[Any, ...]] = [
        ("read from data.train", rows["rows_in"]),
        ("trained on (replay included)", rows["train"]),
        ("replay rows mixed in", rows["replay"]),
        ("held-out eval rows", rows["eval"]),
        ("golden rows (frozen before training)", rows["golden"]),
        ("kept but truncated to max_seq_len", rows["truncated"]),
    ]
    parts = [
        "## Data lineage",
        "sha256 of every input, taken before training:\n\n" + _table(("what", "sha256"), hashes),
        "Rows:\n\n" + _table(("rows", "count"), counts),
        "What hygiene removed, and why:\n\n" + _removed(rows),
        _pii(rows["pii"]),
    ]
    return "\n\n".join(parts)


def _removed(rows: dict[str, Any]) -> str:
    dropped = {reason: n for reason, n in rows["dropped"].items() if n}
    if not dropped:
        return "Nothing: no duplicate, golden leak, PII-dependent or overlong row was found."
    table = [(reason, n, _why_dropped(reason)) for reason, n in sorted(dropped.items())]
    dedup = rows["dedup"]
    return (
        _table(("reason", "rows", "why"), table)
        + f"\n\nDuplicates in data.train: {dedup['exact']} exact, {dedup['near']} near."
    )


def _why_dropped(reason: str) -> str:
    if reason in DROP_REASONS:
        return DROP_REASONS[reason]
    if reason.startswith("replay_") and reason.removeprefix("replay_") in DROP_REASONS:
        return "replay row: " + DROP_REASONS[reason.removeprefix("replay_")]
    return "an unusable row (data.on_error=skip); see `problems` in data_report.json"


def _pii(pii: dict[str, Any]) -> str:
    if pii["mode"] == "off":
        return "PII scan: off (data.pii=off)."
    found = ", ".join(f"{name} {n}" for name, n in sorted(pii["by_recognizer"].items())) or "none"
    action = "redacted" if pii["mode"] == "redact" else "reported, not changed"
    return (
        f"PII scan (data.pii={pii['mode']}): {pii['rows_with_pii']} rows with PII, {action}; rows by recognizer: "
        f"{found}; {pii['dropped_dependent']} rows dropped because the answer repeats a redacted value."
    )


def _gate(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return (
            "## Eval gate\n\nNot gated yet: run `loraforge eval CONFIG` (or train with eval.gate on) and "
            "regenerate this card with `loraforge card DIR`. An ungated adapter is not shipped."
        )
    slices = summary["slices"]
    roles = ["base", "adapter"] + (["against"] if any("against" in s for s in slices.values()) else [])
    header = ("slice", "kind", "rows", *roles, "adapter - base")
    rows = [
        (name, "probe" if s["probe"] else "target", s["n"], *(_rate(s, role) for role in roles),
         f"{100 * (s['adapter'] - s['base']):+.1f} pts")
        for name, s in slices.items()
    ]  # fmt: skip
    parts = [
        "## Eval gate",
        f"Verdict: **{summary['verdict']}**. Each slice of the golden set and the built-in probes is scored on "
        "the base and on the adapter, row by row; the gate blocks an adapter that loses a slice "
        "(docs/eval-gate.md).",
        _table(header, rows),
    ]
    if summary["reasons"]:
        parts.append("Why it blocks:\n\n" + "\n".join(f"- {reason}" for reason in summary["reasons"]))
    if summary.get("notes"):
        parts.append("Notes:\n\n" + "\n".join(f"- {note}" for note in summary["notes"]))
    return "\n\n".join(parts)


def _rate(score: dict[str, Any], role: str) -> str:
    rate = float(score.get(role) or 0.0)
    return f"{rate:.1%} ({round(rate * score['n'])}/{score['n']})"


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds an adapter of `rank`."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), rank)


def _how_to_load(manifest: dict[str, Any]) -> str:
    public = base_model_id(manifest)
    base = public or "BASE_DIR"
    name = adapter_name(manifest)
    rank = manifest["lora"]["r"] * (2 if manifest.get("pissa_converted_to_lora") else 1)
    where = "" if public else " (BASE_DIR: the base model directory it was trained on; its fingerprint must match)"
    peft_code = (
        "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'base = AutoModelForCausalLM.from_pretrained("{base}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{base}")\n'
        'model = PeftModel.from_pretrained(base, "ADAPTER_DIR")\n```'
    )
    serve = (
        f"vllm serve {base} --enable-lora --lora-modules {name}=ADAPTER_DIR --max-lora-rank {vllm_max_lora_rank(rank)}"
    )
    vllm = f"```bash\n{serve}\n```"
    return (
        f"## How to load\n\nADAPTER_DIR is this directory{where}. Prompt it in the chat template it was trained "
        f"with: `chat_template.text` in {MANIFEST_NAME} (sha256 above).\n\n"
        f"In PEFT:\n\n{peft_code}\n\nIn vLLM, as the LoRA module `{name}` (the request's `model`):\n\n{vllm}"
    )


def _verify() -> str:
    return (
        "## Verify before loading\n\nA signed adapter carries `model.sig` (OpenSSF model signing over every other "
        "file, this card included); signing changes no file. Check it with the publisher's public key:\n\n"
        "```bash\nloraforge verify ADAPTER_DIR --pub PUB.pem\n```"
    )


def _provenance(manifest: dict[str, Any]) -> str:
    versions = sorted(manifest["versions"].items())
    gated = "the gate completed it" if manifest.get("eval") is not None else "not gated yet"
    return f"## Provenance\n\nWritten {manifest['created_at']} by training; {gated}. Versions that ran:\n\n" + _table(
        ("package", "version"), versions
    )
