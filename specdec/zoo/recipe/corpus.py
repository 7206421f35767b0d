"""The training corpus of the zoo's trained pair: the running Python's standard library sources.

Every machine with Python has this corpus offline, so the recipe needs no download. The file list is deterministic
(sorted relative paths, fixed exclusion rules) and recorded in a manifest with each file's sha256, so a card can
say exactly what the models saw. The corpus itself is never stored in the repository, only the manifest.

Split: test files (``test/``, ``tests/``, ``idle_test/``) always go to training; of the remaining files, those whose
path hashes to 0 modulo ``HELDOUT_MODULUS`` are held out. The split depends only on the relative path, so it is the
same on every Python version that has the file.

The held-out prompt set (``code-heldout.jsonl``, read at runtime by ``specdec.zoo.prompts.load_prompts``) is cut from
the held-out split by :func:`extract_prompts`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import sysconfig
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HELDOUT_MODULUS = 16
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "pydoc_data", "encodings"})
TEST_DIRS = frozenset({"test", "tests", "idle_test"})
MAX_FILE_BYTES = 400_000
_DEF_LINE = re.compile(r"^\s*(async\s+)?def \w+\(")  # where a held-out prompt starts

LICENSE_NOTE = (
    "The corpus is the source code of the Python standard library, Copyright (c) 2001 Python Software Foundation, "
    "distributed under the PSF License Agreement version 2 (the LICENSE.txt of the Python installation; its sha256 "
    "is recorded in this manifest). The models are trained on it; the sources themselves are not redistributed."
)


@dataclass(frozen=True)
class CorpusFile:
    path: str  # relative to the standard library root, POSIX separators
    sha256: str
    bytes: int
    split: str  # "train" or "heldout"
    text: str


@dataclass(frozen=True)
class Corpus:
    root: Path
    python_version: str  # the version of the standard library read (not necessarily the running Python's)
    files: tuple[CorpusFile, ...]

    def split(self, name: str) -> list[CorpusFile]:
        return [f for f in self.files if f.split == name]

    def manifest(self) -> dict:
        """A JSON-ready description of the corpus: Python version, license, every file with hash and split."""
        entries = [{"path": f.path, "sha256": f.sha256, "bytes": f.bytes, "split": f.split} for f in self.files]
        listing = "\n".join(f"{e['path']} {e['sha256']} {e['split']}" for e in entries)
        license_file = self.root / "LICENSE.txt"
        return {
            "source": "python-stdlib",
            "python_version": self.python_version,
            "stdlib_root": str(self.root),
            "license": "PSF-2.0",
            "license_note": LICENSE_NOTE,
            "license_sha256": _sha256(license_file.read_bytes()) if license_file.exists() else None,
            "selection": {
                "glob": "**/*.py",
                "excluded_dirs": sorted(EXCLUDED_DIRS),
                "max_file_bytes": MAX_FILE_BYTES,
                "utf8_only": True,
                "heldout_rule": f"non-test file with int(sha256(path)[:8], 16) % {HELDOUT_MODULUS} == 0",
            },
            "manifest_sha256": _sha256(listing.encode()),
            "counts": {s: len(self.split(s)) for s in ("train", "heldout")},
            "bytes": {s: sum(f.bytes for f in self.split(s)) for s in ("train", "heldout")},
            "files": entries,
        }


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def collect_corpus(root: Path | None = None, python_version: str | None = None, max_files: int | None = None) -> Corpus:
    """Read the ``.py`` files of a standard library in sorted order (``max_files`` caps them, for tests).

    ``root`` defaults to the running Python's standard library; a copy of another one (for example carried to a
    training machine whose Python lacks the test suite) needs its ``python_version`` named for the manifest.
    """
    if root is None:
        root, python_version = stdlib_root(), sys.version.split()[0]
    paths = sorted((p for p in root.rglob("*.py") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    paths = [p for p in paths if not any(part in EXCLUDED_DIRS for part in p.relative_to(root).parts[:-1])]
    quota = None
    if max_files is not None:
        heldout = max(2, max_files // 8)
        quota = {"heldout": heldout, "train": max(max_files - heldout, 1)}
    files: list[CorpusFile] = []
    for path in paths:
        rel = path.relative_to(root)
        split = _split_of(rel)
        if quota is not None:
            if quota[split] == 0:
                continue
            quota[split] -= 1
        data = path.read_bytes()
        if not data.strip() or len(data) > MAX_FILE_BYTES:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        files.append(CorpusFile(rel.as_posix(), _sha256(data), len(data), split, text))
    return Corpus(root, python_version or "unknown", tuple(files))


def write_manifest(corpus: Corpus, path: Path) -> str:
    """Write the manifest as JSON and return its ``manifest_sha256``."""
    manifest = corpus.manifest()
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest["manifest_sha256"]


def extract_prompts(files: Sequence[CorpusFile], count: int = 32, per_file: int = 2) -> list[dict]:
    """Deterministic prompts: per file, up to ``per_file`` ``def`` lines spread over it, each with 0-2 lines after.

    Returns rows ``{"id", "source", "line", "prompt"}``; the prompt is dedented and ends with a newline unless it is a
    single ``def`` line, which is cut after its opening parenthesis (like ``def parse_args(``).
    """
    rows: list[dict] = []
    for file in files:
        lines = file.text.splitlines(keepends=True)
        starts = [i for i, line in enumerate(lines) if _DEF_LINE.match(line) and len(line) < 100]
        if not starts:
            continue
        picks = sorted({starts[(j * len(starts)) // per_file] for j in range(per_file)})
        for i in picks:
            extra = len(rows) % 3  # 0, 1 or 2 lines after the def line
            if extra == 0:
                text = lines[i].strip()
                text = text[: text.index("(") + 1]
            else:
                text = textwrap.dedent("".join(lines[i : i + 1 + extra]))
                if not text.endswith("\n"):
                    text += "\n"
            rows.append({"id": f"heldout-{len(rows):02d}", "source": file.path, "line": i + 1, "prompt": text})
            if len(rows) == count:
                return rows
    return rows


def write_prompts(rows: Sequence[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _split_of(rel: Path) -> str:
    if any(part in TEST_DIRS for part in rel.parts[:-1]):
        return "train"
    bucket = int(_sha256(rel.as_posix().encode())[:8], 16) % HELDOUT_MODULUS
    return "heldout" if bucket == 0 else "train"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
