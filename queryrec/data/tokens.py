"""Parser for KuaiSAR's hashed word lists (`keyword` in src_inter, `caption` in item_features).

Both columns hold a JSON list of integers in a string, e.g. "[20, 34, 3]"; the same word
hashes to the same integer in both, which is what lets a query share word embeddings with
item captions. The format is validated strictly (a list of JSON integers of at most 18 digits,
optional spaces) so that a malformed cell is reported with its row instead of being
silently read as an empty query. `parse_token_list` (one value) and `parse_token_column`
(a whole column, vectorised) accept exactly the same texts.
"""

from __future__ import annotations

import json
import re

import polars as pl

# ASCII digits and blanks only: Python's and Rust's `\d` / `\s` also match other scripts.
_INT = r"-?(?:0|[1-9][0-9]{0,17})"  # JSON integers: no leading zeros
_BLANK = r"[ \t]*"
TOKEN_LIST_PATTERN = (
    rf"^{_BLANK}\[{_BLANK}(?:{_INT}{_BLANK}(?:,{_BLANK}{_INT}{_BLANK})*)?\]{_BLANK}$"
)
_TOKEN_LIST_RE = re.compile(TOKEN_LIST_PATTERN)


class TokenListError(ValueError):
    """A text that is not a JSON list of integers."""


def format_token_list(tokens: list[int]) -> str:
    """Write tokens the way KuaiSAR does: "[20, 34, 3]"."""
    return "[" + ", ".join(str(int(t)) for t in tokens) + "]"


def parse_token_list(text: str) -> list[int]:
    """Parse one keyword/caption cell; raise TokenListError if it is not a list of ints."""
    if _TOKEN_LIST_RE.fullmatch(text) is None:
        raise TokenListError(f"not a JSON list of integers: {_shorten(text)!r}")
    return [int(t) for t in json.loads(text)]


def parse_token_column(texts: pl.Series) -> tuple[pl.Series, int | None]:
    """Parse a column of token-list strings.

    Returns the parsed `List(Int64)` series (null where the input is null) and the index
    of the first malformed non-null value, or None when every value is well formed.
    """
    texts = texts.cast(pl.String)
    valid = texts.str.contains(TOKEN_LIST_PATTERN)
    bad = texts.is_not_null() & ~valid
    if bad.any():
        return pl.Series(texts.name, [], dtype=pl.List(pl.Int64)), int(bad.arg_true()[0])
    parsed = texts.str.json_decode(pl.List(pl.Int64))
    return parsed.alias(texts.name), None


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
