"""Bad raw input: one clear line naming file, row and column; exit non-zero; nothing written."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import pytest

from app.cli import main


def _replace_line(path: Path, line_number: int, edit: Callable[[str], str]) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[line_number - 1] = edit(lines[line_number - 1])
    path.write_text("".join(lines), encoding="utf-8")


def _rename_column(path: Path, old: str, new: str) -> None:
    _replace_line(path, 1, lambda header: header.replace(old, new, 1))


def _prepare(raw: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["data", "prepare", "--raw", str(raw), "--out", str(out)])
    return code, capsys.readouterr().err


def _assert_clean_failure(code: int, err: str, out: Path, *needles: str) -> str:
    assert code != 0
    error_lines = [line for line in err.splitlines() if not line.startswith("[prepare]")]
    assert len(error_lines) == 1, err
    line = error_lines[0]
    assert line.startswith("queryrec: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in line, line
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]  # no half-written output
    return line


def test_missing_file(raw_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (raw_copy / "src_inter.csv").unlink()
    out = tmp_path / "data"
    code, err = _prepare(raw_copy, out, capsys)
    _assert_clean_failure(code, err, out, "src_inter.csv", "file not found")


def test_missing_raw_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data"
    code, err = _prepare(tmp_path / "nowhere", out, capsys)
    _assert_clean_failure(code, err, out, "nowhere", "not found")


def test_missing_column(raw_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = raw_copy / "rec_inter.csv"
    _replace_line(path, 1, lambda header: header.replace(",click,", ",", 1))
    out = tmp_path / "data"
    code, err = _prepare(raw_copy, out, capsys)
    _assert_clean_failure(code, err, out, "rec_inter.csv", "'click'", "missing")


def test_misspelled_column_gets_a_hint(
    raw_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _rename_column(raw_copy / "src_inter.csv", "search_session_id", "search_sesion_id")
    out = tmp_path / "data"
    code, err = _prepare(raw_copy, out, capsys)
    _assert_clean_failure(
        code, err, out, "src_inter.csv", "'search_session_id'", "found 'search_sesion_id'"
    )


def test_malformed_keyword_list(
    raw_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _replace_line(raw_copy / "src_inter.csv", 18, lambda line: line.replace('"[', '"[x, ', 1))
    out = tmp_path / "data"
    code, err = _prepare(raw_copy, out, capsys)
    _assert_clean_failure(
        code,
        err,
        out,
        "src_inter.csv",
        "row 17 (line 18)",
        "column 'keyword'",
        "malformed word list",
    )


def test_malformed_caption(
    raw_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _replace_line(raw_copy / "item_features.csv", 5, lambda line: line.replace('"[', '"[[', 1))
    out = tmp_path / "data"
    code, err = _prepare(raw_copy, out, capsys)
    _assert_clean_failure(code, err, out, "item_features.csv", "row 4 (line 5)", "column 'caption'")


@pytest.mark.parametrize(
    ("file", "column_index", "column", "bad"),
    [
        ("rec_inter.csv", 0, "user_id", "u42"),
        ("rec_inter.csv", 1, "item_id", "12.5"),
        ("rec_inter.csv", 4, "timestamp", "yesterday"),
        ("src_inter.csv", 1, "item_id", "abc"),
        ("user_features.csv", 0, "user_id", "-3"),
    ],
)
def test_bad_numbers(
    raw_copy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    file: str,
    column_index: int,
    column: str,
    bad: str,
) -> None:
    def edit(line: str) -> str:
        cells = next(csv.reader([line]))
        cells[column_index] = bad
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(cells)
        return buffer.getvalue()

    _replace_line(raw_copy / file, 10, edit)
    out = tmp_path / "data"
    code, err = _prepare(raw_copy, out, capsys)
    _assert_clean_failure(code, err, out, file, "row 9 (line 10)", f"column '{column}'", repr(bad))


def test_empty_value_in_a_required_column(
    raw_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _replace_line(raw_copy / "rec_inter.csv", 3, lambda line: "," + line.split(",", 1)[1])
    out = tmp_path / "data"
    code, err = _prepare(raw_copy, out, capsys)
    _assert_clean_failure(
        code, err, out, "rec_inter.csv", "row 2 (line 3)", "column 'user_id'", "empty value"
    )


def test_empty_file(raw_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (raw_copy / "item_features.csv").write_bytes(b"")
    out = tmp_path / "data"
    code, err = _prepare(raw_copy, out, capsys)
    _assert_clean_failure(code, err, out, "item_features.csv", "file is empty")


def test_header_only_file(
    raw_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = raw_copy / "rec_inter.csv"
    path.write_text(path.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    out = tmp_path / "data"
    code, err = _prepare(raw_copy, out, capsys)
    _assert_clean_failure(code, err, out, "rec_inter.csv", "no data rows")


def test_ragged_csv(raw_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _replace_line(raw_copy / "user_features.csv", 4, lambda line: line.rstrip("\n") + ",7,8,9\n")
    out = tmp_path / "data"
    code, err = _prepare(raw_copy, out, capsys)
    _assert_clean_failure(code, err, out, "user_features.csv", "not a readable CSV")


def test_existing_output_is_kept_on_failure(
    raw_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--force replaces the old dataset only once the new one is complete."""
    out = tmp_path / "data"
    assert main(["data", "prepare", "--raw", str(raw_copy), "--out", str(out)]) == 0
    before = (out / "schema.json").read_bytes()
    (raw_copy / "src_inter.csv").unlink()
    capsys.readouterr()
    assert main(["data", "prepare", "--raw", str(raw_copy), "--out", str(out), "--force"]) == 2
    assert (out / "schema.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
