"""Read the KuaiSAR CSV files, real or synthetic, into typed polars frames.

Columns are matched by header name (a UTF-8 BOM and surrounding blanks are ignored;
extra columns are skipped), every read column is validated, and any problem becomes a
`DataFormatError` that names the file, the data row and the column. Cells are read as text
and cast column by column, so that the first bad value can be located exactly.

Typed output per `ColumnKind`: ID -> Int64, MILLIS -> Int64 (ms; floats such as
"1684742000000.0" or "1.684742e+12" are rounded), FLAG -> Int8 0/1 (counts > 0 read as 1),
CATEGORY/TEXT -> String, TOKENS -> List(Int64).
"""

from __future__ import annotations

import csv
import difflib
import io
from pathlib import Path

import polars as pl

from queryrec.data.kuaisar import ALL_FILES, REQUIRED_FILES, Column, ColumnKind, FileSpec
from queryrec.data.tokens import parse_token_column
from queryrec.errors import DataFormatError


def locate_raw_dir(raw_dir: Path) -> Path:
    """The folder that holds the CSVs: `raw_dir` itself, or its one subfolder that does.

    The real archive unpacks to `KuaiSAR_final/`, so pointing at the unzip target works too.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataFormatError(raw_dir, "raw data folder not found")
    if (raw_dir / REQUIRED_FILES[0].name).exists():
        return raw_dir
    holders = [d for d in sorted(raw_dir.iterdir()) if (d / REQUIRED_FILES[0].name).is_file()]
    if len(holders) == 1:
        return holders[0]
    return raw_dir  # the missing-file error is raised by read_table, naming the file


def read_header(path: Path) -> list[str]:
    """The column names of a CSV file, BOM and blanks stripped."""
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataFormatError(path, "file is empty (expected a header row and data rows)")
    with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as handle:
        first = handle.readline()
    if not first.strip():
        raise DataFormatError(path, "the first line is blank (expected a header row)")
    return [name.strip() for name in next(csv.reader(io.StringIO(first)))]


def _missing_column_message(column: str, header: list[str]) -> str:
    close = difflib.get_close_matches(column, header, n=1, cutoff=0.6)
    hint = f"; found '{close[0]}' instead, is it misspelled?" if close else ""
    return f"required column '{column}' is missing from the header{hint}"


def read_table(raw_dir: Path, spec: FileSpec) -> pl.DataFrame:
    """Read one KuaiSAR file: the spec's required columns, and its optional ones if present."""
    path = Path(raw_dir) / spec.name
    header = read_header(path)
    positions: dict[str, int] = {}
    for index, name in enumerate(header):
        positions.setdefault(name, index)
    for column in spec.required:
        if column not in positions:
            raise DataFormatError(path, _missing_column_message(column, header))
    wanted = [c for c in spec.columns if c in positions]
    try:
        raw = pl.read_csv(
            path,
            columns=[positions[c] for c in wanted],
            infer_schema=False,  # every cell as text; cast below, column by column
            encoding="utf8-lossy",
        )
    except pl.exceptions.PolarsError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataFormatError(path, f"not a readable CSV file: {first_line}") from None
    # Name columns as read_header does (a BOM or blanks polars may keep are dropped), then
    # order them as the spec lists them.
    raw.columns = [name.lstrip("\ufeff").strip() for name in raw.columns]
    raw = raw.select(wanted)
    if spec.must_have_rows and raw.height == 0:
        raise DataFormatError(path, "file has a header but no data rows")
    return pl.DataFrame([_cast_column(path, raw[c], spec.columns[c]) for c in wanted])


def _cast_column(path: Path, text: pl.Series, column_spec: Column) -> pl.Series:
    """Parse one text column per its kind; raise DataFormatError at the first bad cell."""
    name = text.name
    kind, nullable = column_spec.kind, column_spec.nullable
    text = text.str.strip_chars()
    text = pl.Series(name, text).replace("", None)
    is_null = text.is_null()
    if not nullable and is_null.any():
        raise DataFormatError(path, "empty value", row=_row(is_null), column=name)

    if kind in (ColumnKind.CATEGORY, ColumnKind.TEXT):
        return text
    if kind is ColumnKind.TOKENS:
        parsed, bad_index = parse_token_column(text)
        if bad_index is not None:
            value = text[bad_index]
            raise DataFormatError(
                path,
                f"malformed word list {value!r} (expected a JSON list of integers like '[20, 34, 3]')",
                row=bad_index + 1,
                column=name,
            )
        return parsed.fill_null([]) if nullable else parsed

    as_float = text.cast(pl.Float64, strict=False)
    bad_number = text.is_not_null() & (
        as_float.is_null() | as_float.is_nan() | as_float.is_infinite()
    )
    if bad_number.any():
        index = _row(bad_number) - 1
        raise DataFormatError(path, f"{text[index]!r} is not a number", row=index + 1, column=name)

    if kind is ColumnKind.ID:
        as_int = text.cast(pl.Int64, strict=False)
        # Integral floats ("12.0", as pandas writes an id column that had a NaN) are fine.
        not_int = as_int.is_null() & text.is_not_null()
        if not_int.any():
            fractional = not_int & (as_float != as_float.round(0))
            if fractional.any():
                index = _row(fractional) - 1
                raise DataFormatError(
                    path, f"{text[index]!r} is not an integer id", row=index + 1, column=name
                )
            as_int = pl.select(
                pl.when(not_int).then(as_float.cast(pl.Int64)).otherwise(as_int)
            ).to_series()
        negative = as_int < 0
        if negative.any():
            index = _row(negative) - 1
            raise DataFormatError(
                path, f"{text[index]!r} is a negative id", row=index + 1, column=name
            )
        return (as_int.fill_null(0) if nullable else as_int).alias(name)

    if kind is ColumnKind.MILLIS:
        exact = text.cast(pl.Int64, strict=False)
        millis = pl.select(
            pl.when(exact.is_not_null()).then(exact).otherwise(as_float.round(0).cast(pl.Int64))
        ).to_series()
        return millis.alias(name)

    if kind is ColumnKind.FLAG:
        negative = as_float < 0
        if negative.any():
            index = _row(negative) - 1
            raise DataFormatError(
                path, f"{text[index]!r} is negative (expected 0 or 1)", row=index + 1, column=name
            )
        return (as_float > 0).cast(pl.Int8).alias(name)

    raise AssertionError(f"unhandled column kind {kind}")


def _row(mask: pl.Series) -> int:
    """1-based data row of the first True in `mask`."""
    return int(mask.arg_true()[0]) + 1


def read_all(raw_dir: Path) -> dict[str, pl.DataFrame]:
    """Read every KuaiSAR file in `raw_dir`; social_network.csv is optional."""
    raw_dir = locate_raw_dir(raw_dir)
    tables: dict[str, pl.DataFrame] = {}
    for spec in ALL_FILES:
        if spec not in REQUIRED_FILES and not (raw_dir / spec.name).exists():
            continue
        tables[spec.name] = read_table(raw_dir, spec)
    return tables
