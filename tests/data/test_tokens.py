"""The keyword/caption parser: property tests and the exact accepted format."""

from __future__ import annotations

import json

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from queryrec.data.tokens import (
    TokenListError,
    format_token_list,
    parse_token_column,
    parse_token_list,
)

int64_tokens = st.lists(st.integers(min_value=-(10**17), max_value=10**18 - 1), max_size=30)


@given(int64_tokens)
def test_format_then_parse_round_trips(tokens: list[int]) -> None:
    assert parse_token_list(format_token_list(tokens)) == tokens


@given(int64_tokens, st.sampled_from(["", " ", "  ", "\t"]), st.sampled_from([",", ", ", " ,  "]))
def test_blank_variants_parse_the_same(tokens: list[int], pad: str, sep: str) -> None:
    text = f"{pad}[{pad}" + sep.join(str(t) for t in tokens) + f"{pad}]{pad}"
    assert parse_token_list(text) == tokens


@given(st.lists(st.one_of(st.text(max_size=12), st.none()), max_size=20))
def test_column_parser_agrees_with_scalar_parser(texts: list[str | None]) -> None:
    parsed, bad = parse_token_column(pl.Series("keyword", texts, dtype=pl.String))
    expected_bad = None
    for index, text in enumerate(texts):
        if text is None:
            continue
        try:
            parse_token_list(text)
        except TokenListError:
            expected_bad = index
            break
    assert bad == expected_bad
    if bad is None:
        for text, value in zip(texts, parsed.to_list(), strict=True):
            assert value == (None if text is None else parse_token_list(text))


@given(st.lists(int64_tokens, min_size=1, max_size=20))
def test_column_parser_matches_json(lists: list[list[int]]) -> None:
    texts = [json.dumps(tokens) for tokens in lists]
    parsed, bad = parse_token_column(pl.Series("caption", texts))
    assert bad is None
    assert parsed.to_list() == lists


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[",
        "]",
        "1, 2",
        "[1, 2",
        "[1,, 2]",
        "[1, 2,]",
        "[1.5]",
        "['1']",
        '["1"]',
        "[01]",
        "[1 2]",
        "[x]",
        "[1234567890123456789]",
        "[٣]",
        "null",
        "[[1]]",
        "[1]x",
    ],
)
def test_malformed_lists_are_rejected(text: str) -> None:
    with pytest.raises(TokenListError):
        parse_token_list(text)
    _, bad = parse_token_column(pl.Series("keyword", ["[1]", text]))
    assert bad == 1


def test_kuaisar_examples() -> None:
    assert parse_token_list("[20, 34, 3]") == [20, 34, 3]
    assert parse_token_list("[]") == []
    assert parse_token_list("[ -0 ]") == [0]
    assert format_token_list([1, 213, 24]) == "[1, 213, 24]"
