"""Field validation shared by the venue mappers: one definition of a trustworthy number.

Venues send decimals as strings, and Python's ``float()`` is far more lenient than any venue's
syntax: it accepts ``"1_000"``, ``" 7 "``, ``"+5"``, ``"1e3"``, ``"nan"`` and ``"inf"``. A
mapper that trusted ``float()`` would store such values as if the venue had sent them, so each
number is matched against the venue's decimal syntax instead (``DecimalSyntax``) by the kind of
field it is:

  price           > 0, unsigned                       trade, mark, index, liquidation prices
  quantity        > 0, unsigned                       trade and liquidation sizes
  amount          >= 0, unsigned                      totals that can be empty: open interest
  signed          any sign                            funding rates
  levels          [[price, quantity >= 0], ...]       book levels: quantity 0 deletes the level

Everything that fails raises ``MalformedMessage`` naming the field and the value, so the
message is dead-lettered with that reason. Values that pass are returned verbatim (lossless).
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import orjson

from ingest.venue import MalformedMessage

_DIGITS = r"(?:0|[1-9][0-9]*)(?:\.[0-9]+)?"
_POSITIVE = r"(?:[1-9][0-9]*(?:\.[0-9]+)?|0\.0*[1-9][0-9]*)"
_EXPONENT = r"(?:[eE][-+]?[0-9]+)?"


def field(obj, key: str, what: str):
    try:
        return obj[key]
    except KeyError:
        raise MalformedMessage(f"{what}: missing field {key!r}") from None
    except TypeError:
        raise MalformedMessage(f"{what}: payload is {type(obj).__name__}, expected an object") from None


def integer(obj, key: str, what: str) -> int:
    value = field(obj, key, what)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedMessage(f"{what}: field {key!r} must be an integer, got {value!r}")
    return value


class _Kind(NamedTuple):
    expected: str
    positive: bool
    pattern: str


_PRICE = _Kind("a positive decimal string", True, _POSITIVE)
_AMOUNT = _Kind("a decimal string >= 0", False, _DIGITS)
_SIGNED = _Kind("a decimal string", False, "-?" + _DIGITS)


class DecimalSyntax:
    """One venue's decimal strings: digits with an optional fraction, no padding, no ``_``, no
    leading zeros, a sign only on signed fields, an exponent only if the venue writes them."""

    def __init__(self, *, exponent: bool = False):
        self.exponent = exponent
        tail = _EXPONENT if exponent else ""
        self._match = {kind: re.compile(kind.pattern + tail).fullmatch for kind in (_PRICE, _AMOUNT, _SIGNED)}
        # A book side is checked as its orjson text with one match: a C-speed pass over hundreds
        # of levels that also proves every level is a list of exactly two strings.
        level = rb'\["' + (_PRICE.pattern + tail).encode() + rb'","' + (_AMOUNT.pattern + tail).encode() + rb'"\]'
        self._side = re.compile(rb"\[(?:" + level + rb"(?:," + level + rb")*)?\]").fullmatch

    def price(self, obj, key: str, what: str) -> str:
        return self._check(obj, key, what, _PRICE)

    def quantity(self, obj, key: str, what: str) -> str:
        """A traded or liquidated size: zero is no trade, so it is refused like a zero price."""
        return self._check(obj, key, what, _PRICE)

    def amount(self, obj, key: str, what: str) -> str:
        return self._check(obj, key, what, _AMOUNT)

    def signed(self, obj, key: str, what: str) -> str:
        return self._check(obj, key, what, _SIGNED)

    def levels(self, obj, key: str, what: str) -> list:
        levels = field(obj, key, what)
        if not isinstance(levels, list):
            raise MalformedMessage(f"{what}: field {key!r} must be a list of [price, qty]")
        try:
            text = orjson.dumps(levels)
        except orjson.JSONEncodeError:
            text = b""
        if self._side(text) and not self.exponent:
            return levels
        where = f"{what} {key!r} level"
        for level in levels:
            if not (isinstance(level, list) and len(level) == 2):
                raise MalformedMessage(f"{what}: field {key!r} has a level that is not [price, qty]: {level!r}")
            self._check(level, 0, where, _PRICE)
            self._check(level, 1, where, _AMOUNT)
        return levels

    def _check(self, obj, key, what: str, kind: _Kind) -> str:
        value = field(obj, key, what)
        if type(value) is str and self._match[kind](value) and (not self.exponent or _in_range(value, kind)):
            return value
        label = f"field {key!r}" if isinstance(key, str) else ("price", "quantity")[key]
        raise MalformedMessage(f"{what}: {label} must be {kind.expected}, got {value!r}")


def _in_range(value: str, kind: _Kind) -> bool:
    """With an exponent the syntax alone no longer bounds the value: 1e400 overflows, 1e-400 is 0."""
    number = float(value)
    return math.isfinite(number) and (number > 0 if kind.positive else True)
