"""Claude's public list prices (https://www.anthropic.com/pricing), USD per million (input, output)
tokens by model prefix, the first match wins: the defaults of ``Settings.llm_prices`` (which an
operator may override) and the table of ``summarize.price`` for library use. Kept apart so that
settings read it without importing the Anthropic SDK."""

from __future__ import annotations

PriceTable = tuple[tuple[str, float, float], ...]
PRICES_PER_MTOK: PriceTable = (
    ("claude-opus-4-5", 5.0, 25.0),
    ("claude-opus-4-6", 5.0, 25.0),
    ("claude-opus", 15.0, 75.0),
    ("claude-3-opus", 15.0, 75.0),
    ("claude-sonnet", 3.0, 15.0),
    ("claude-3-7-sonnet", 3.0, 15.0),
    ("claude-3-5-sonnet", 3.0, 15.0),
    ("claude-haiku-4", 1.0, 5.0),
    ("claude-3-5-haiku", 0.8, 4.0),
    ("claude-3-haiku", 0.25, 1.25),
)
