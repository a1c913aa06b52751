"""The venues' shared number validation: which decimal strings each field kind accepts."""

from __future__ import annotations

import pytest

from ingest.venue import MalformedMessage
from ingest.venues.fields import DecimalSyntax

PLAIN = DecimalSyntax()
WITH_EXPONENT = DecimalSyntax(exponent=True)

# Strings float() accepts that no plain-decimal venue sends.
FLOAT_ONLY = ["1_000", " 7 ", "7 ", "\t7", "+5", "1e3", "1E-2", "nan", "NaN", "inf", "-inf", "Infinity", "0x10",
              "\u0667", "１"]
MALFORMED = ["", "abc", ".5", "5.", "1.2.3", "--1", "1,5", "007", "00.5", "- 1"]

ACCEPTED = {
    "price": ["1", "0.5", "0.00000001", "7.5040", "26142.12", "10", "100.000"],
    "quantity": ["1", "0.001", "813", "4421", "1.0"],
    "amount": ["0", "0.000", "10659.509", "1"],
    "signed": ["0", "0.00000000", "0.00038167", "-0.00038167", "-0", "-12.5", "7"],
}
REJECTED = {
    "price": ["0", "0.0", "0.00000000", "-1", "-0.5", *FLOAT_ONLY, *MALFORMED],
    "quantity": ["0", "0.000", "-0.001", *FLOAT_ONLY, *MALFORMED],
    "amount": ["-1", "-0", *FLOAT_ONLY, *MALFORMED],
    "signed": ["+0.0001", "--0.1", *FLOAT_ONLY, *MALFORMED],
}
NOT_STRINGS = [1, 1.5, 0, None, True, [], {}]


@pytest.mark.parametrize("kind, value", [(k, v) for k, values in ACCEPTED.items() for v in values])
def test_accepted_numbers_come_back_verbatim(kind, value):
    assert getattr(PLAIN, kind)({"x": value}, "x", "test") == value


@pytest.mark.parametrize("kind, value", [(k, v) for k, values in REJECTED.items() for v in values]
                         + [(k, v) for k in ACCEPTED for v in NOT_STRINGS])
def test_rejected_numbers_name_the_field_and_the_value(kind, value):
    with pytest.raises(MalformedMessage) as err:
        getattr(PLAIN, kind)({"px": value}, "px", "trade")
    assert str(err.value).startswith("trade: field 'px' must be ") and str(err.value).endswith(f"got {value!r}")


def test_missing_field_and_non_object_payload():
    with pytest.raises(MalformedMessage, match="trade: missing field 'p'"):
        PLAIN.price({}, "p", "trade")
    with pytest.raises(MalformedMessage, match="payload is list, expected an object"):
        PLAIN.price([], "p", "trade")


@pytest.mark.parametrize("value, ok", [("1e3", True), ("2.5E-4", True), ("1e+2", True), ("1e400", False),
                                       ("1e-400", False), ("0e5", False), ("1_0e3", False), (" 1e3", False)])
def test_exponent_only_where_a_venue_writes_them(value, ok):
    if ok:
        assert WITH_EXPONENT.price({"p": value}, "p", "t") == value
    else:
        with pytest.raises(MalformedMessage, match="positive decimal"):
            WITH_EXPONENT.price({"p": value}, "p", "t")


def test_levels_accept_zero_quantity_deletes_and_return_the_same_list():
    levels = [["7.5040", "813"], ["7.6090", "0"], ["0.0001", "0.000"]]
    assert PLAIN.levels({"b": levels}, "b", "depthUpdate") is levels
    assert PLAIN.levels({"b": []}, "b", "depthUpdate") == []
    assert WITH_EXPONENT.levels({"b": [["1e2", "0"]]}, "b", "depthUpdate") == [["1e2", "0"]]


@pytest.mark.parametrize("levels, reason", [
    ([["0", "1"]], "'b' level: price must be a positive decimal string, got '0'"),
    ([["1", "-1"]], "'b' level: quantity must be a decimal string >= 0, got '-1'"),
    ([["1", "1_000"]], "quantity must be a decimal string >= 0, got '1_000'"),
    ([["1", "2"], [" 7 ", "2"]], "price must be a positive decimal string, got ' 7 '"),
    ([["1", "nan"]], "got 'nan'"),
    ([["1", 2]], "got 2"),
    ([["1", "2", "3"]], "not \\[price, qty\\]"),
    ([["1"]], "not \\[price, qty\\]"),
    (["12", "34"], "not \\[price, qty\\]"),
    ([{"p": "1"}], "not \\[price, qty\\]"),
    ("1,2", "must be a list"),
])
def test_bad_levels_name_the_culprit(levels, reason):
    with pytest.raises(MalformedMessage, match=reason):
        PLAIN.levels({"b": levels}, "b", "depthUpdate")
    with pytest.raises(MalformedMessage, match=reason):
        WITH_EXPONENT.levels({"b": levels}, "b", "depthUpdate")


def test_exponent_levels_still_refuse_what_overflows_or_underflows():
    with pytest.raises(MalformedMessage, match="got '1e-400'"):
        WITH_EXPONENT.levels({"a": [["1", "2"], ["1e-400", "1"]]}, "a", "depthUpdate")
    with pytest.raises(MalformedMessage, match="got '1e400'"):
        WITH_EXPONENT.levels({"a": [["1", "1e400"]]}, "a", "depthUpdate")
