"""The one error a malformed suite raises: it names the file, the key (and line) and what was expected."""

from __future__ import annotations

from pathlib import Path


class SuiteError(Exception):
    """A suite file cannot be used. ``str()`` reads ``FILE:LINE: KEY: MESSAGE`` (line and key when known)."""

    def __init__(self, path: Path | str, message: str, key: str | None = None, line: int | None = None) -> None:
        self.path = Path(path)
        self.key = key
        self.line = line
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = str(self.path) + (f":{self.line}" if self.line is not None else "")
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
