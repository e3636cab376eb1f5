"""Every golden check type and the refusal detector."""

from __future__ import annotations

import pytest

from loraforge.errors import EvalError
from loraforge.evaluate.checks import REFUSAL_PHRASES, hopeless_test, is_refusal, run_checks, validate_checks

REF_JSON = '{"order_id": "ORD-1", "product": "desk", "urgency": "low"}'


def passes(check: dict, answer: str, reference: str = "ref") -> bool:
    return all(o.passed for o in run_checks([check], answer, reference))


def test_exact_ignores_whitespace_differences() -> None:
    assert passes({"type": "exact"}, "  The  capital\nis Paris ", "The capital is Paris")
    assert not passes({"type": "exact"}, "The capital is Rome", "The capital is Paris")


def test_no_checks_means_exact() -> None:
    assert [o.type for o in run_checks([], "a", "a")] == ["exact"]
    assert not run_checks([], "a", "b")[0].passed


def test_contains_is_case_insensitive_unless_asked() -> None:
    assert passes({"type": "contains", "value": "paris"}, "It is Paris.")
    assert not passes({"type": "contains", "value": "paris", "case_sensitive": True}, "It is Paris.")


def test_regex_search_and_full_match() -> None:
    assert passes({"type": "regex", "pattern": r"ORD-\d+"}, "your order ORD-123 is late")
    assert not passes({"type": "regex", "pattern": r"ORD-\d+", "full_match": True}, "your order ORD-123")
    assert passes({"type": "regex", "pattern": r"ORD-\d+", "full_match": True}, " ORD-123 ")


def test_json_valid_accepts_one_code_fence_and_rejects_prose() -> None:
    assert passes({"type": "json_valid"}, '```json\n{"a": 1}\n```')
    assert not passes({"type": "json_valid"}, 'Here you go: {"a": 1}')


def test_json_fields_compares_listed_fields_to_the_reference() -> None:
    check = {"type": "json_fields", "fields": ["order_id", "product"]}
    assert passes(check, '{"product": "desk", "order_id": "ORD-1", "urgency": "high"}', REF_JSON)
    outcome = run_checks([check], '{"order_id": "ORD-2", "product": "desk"}', REF_JSON)[0]
    assert not outcome.passed and "order_id" in outcome.detail


def test_refusal_and_not_refusal_are_opposites() -> None:
    refusal = "I'm sorry, but I can't help with that."
    answer = "Use `kill -9 PID` to stop it."
    assert passes({"type": "refusal"}, refusal) and not passes({"type": "refusal"}, answer)
    assert passes({"type": "not_refusal"}, answer) and not passes({"type": "not_refusal"}, refusal)


@pytest.mark.parametrize("phrase", REFUSAL_PHRASES)
def test_refusal_detector_knows_each_phrase(phrase: str) -> None:
    assert is_refusal(f"{phrase.capitalize()} do that for you.")


def test_refusal_detector_reads_curly_apostrophes() -> None:
    assert is_refusal("I can\u2019t help with that.")


def test_refusal_detector_ignores_phrases_deep_in_a_helpful_answer() -> None:
    helpful = "To bake a cake, preheat the oven to 180C and mix flour, sugar and eggs. " * 3 + "I can't stress enough."
    assert not is_refusal(helpful)


def test_condolence_is_not_a_refusal() -> None:
    assert not is_refusal("I'm sorry for your loss. Here is what you can do next.")


def test_unknown_check_type_names_the_row_and_the_known_types() -> None:
    with pytest.raises(EvalError, match=r"golden.jsonl line 3: checks\[0\]: unknown check type 'fuzzy'.*exact"):
        validate_checks([{"type": "fuzzy"}], "ref", "golden.jsonl line 3")


def test_json_fields_needs_a_json_reference() -> None:
    with pytest.raises(EvalError, match="reference answer .* is not JSON"):
        validate_checks([{"type": "json_fields", "fields": ["a"]}], "not json", "g line 1")


def test_bad_regex_is_reported_before_generation() -> None:
    with pytest.raises(EvalError, match="not a valid regular expression"):
        validate_checks([{"type": "regex", "pattern": "("}], "ref", "g line 1")


HOPELESS_CASES = [  # (checks, reference, answer so far, hopeless)
    ([{"type": "json_valid"}], REF_JSON, "I'm sorry for your loss", True),
    ([{"type": "json_valid"}], REF_JSON, '  {"order', False),
    ([{"type": "json_valid"}], REF_JSON, "``", False),  # a fence may be opening
    ([{"type": "json_valid"}], REF_JSON, "", False),
    ([{"type": "json_fields", "fields": ["product"]}], REF_JSON, "[1, 2", True),  # JSON, but never an object
    ([{"type": "exact"}], "The capital is Paris", "The  capital\nis Pa", False),
    ([{"type": "exact"}], "The capital is Paris", "The capital was", True),
    ([], "yes", "no", True),  # no checks means exact
    ([{"type": "not_refusal"}], "", "I'm sorry, but I can't", True),
    ([{"type": "refusal"}], "", "Sure! " + "Here is how. " * 14, True),  # the opening window is full
    ([{"type": "refusal"}], "", "Sure! Here is", False),  # a refusal may still come
    ([{"type": "json_valid"}, {"type": "contains", "value": "x"}], REF_JSON, "Hello", True),  # one check is enough
]


@pytest.mark.parametrize(("checks", "reference", "answer", "hopeless"), HOPELESS_CASES)
def test_a_hopeless_answer_fails_whatever_follows_and_a_hopeful_one_is_left_alone(
    checks: list, reference: str, answer: str, hopeless: bool
) -> None:
    test = hopeless_test(checks, reference)
    assert test is not None and test(answer) is hopeless
    if hopeless:  # the row fails now and with any continuation: ending it early cannot change its score
        for more in ["", "}", " Paris", ' {"a": 1}', "I can't help with that.", reference]:
            assert not all(o.passed for o in run_checks(checks, answer + more, reference))


def test_checks_that_a_later_token_can_still_meet_never_give_up() -> None:
    assert hopeless_test([{"type": "contains", "value": "Paris"}], "Paris") is None
    assert hopeless_test([{"type": "regex", "pattern": "ORD-[0-9]+"}], "ORD-1") is None
    # a character split across tokens decodes to U+FFFD until its last byte arrives
    assert hopeless_test([{"type": "exact"}], "caf\u00e9")("caf\ufffd") is False  # type: ignore[misc]
