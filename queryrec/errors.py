"""The one exception root of the offline package.

Every error a user can fix (bad input files, a wrong output path, a dataset that does not
match its schema) derives from `QueryRecError`; the CLI prints its message as one line on
stderr and exits non-zero. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class QueryRecError(Exception):
    """An error the user can fix; the message says what was wrong and where."""


class DataFormatError(QueryRecError):
    """A raw input file is missing, empty, or holds a value the reader cannot accept.

    The message names the file and, where known, the data row (1-based, the header not
    counted), the line in the file (header = line 1) and the column.
    """

    def __init__(
        self,
        file: str | Path,
        problem: str,
        *,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.file = str(file)
        self.problem = problem
        self.row = row
        self.column = column
        where = [self.file]
        if row is not None:
            where.append(f"row {row} (line {row + 1})")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {problem}")


class OutputExistsError(QueryRecError):
    """The output directory exists and is not empty; pass --force to replace it."""


class SchemaMismatchError(QueryRecError):
    """A prepared dataset, checkpoint or bundle does not match the schema it claims."""


class BundleError(QueryRecError):
    """A model bundle is missing a file, was altered, or has a format this code cannot read."""
