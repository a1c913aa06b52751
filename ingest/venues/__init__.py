"""Venue mappers: one small module per venue, raw messages in, normalized records out.

A mapper raises ``SkipMessage`` for messages it understands but does not collect (counted
with the reason) and ``MalformedMessage`` for messages it cannot trust (sent to ``md.dlq``).
"""


class SkipMessage(Exception):
    """A well-formed message perpflow deliberately does not collect; the text is the reason."""


class MalformedMessage(ValueError):
    """A message that cannot be mapped; the text says what is wrong with it."""


def venue(name: str):
    """The mapper for a venue id as used on the command line."""
    from ingest.venues.binance_usdm import BinanceUsdm

    venues = {"binance-usdm": BinanceUsdm}
    try:
        return venues[name]()
    except KeyError:
        raise ValueError(f"unknown exchange {name!r}; supported: {', '.join(sorted(venues))}") from None
