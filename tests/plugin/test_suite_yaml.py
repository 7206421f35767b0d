"""The YAML layer of suites: untrusted input is bounded before any value is built, aliases and merge keys work,
and lines are those written (an alias is not followed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_specdec.errors import SuiteError
from pytest_specdec.yaml_source import load_yaml

ROOT = Path(__file__).resolve().parents[2]

# A "billion laughs" file: nine levels of nine aliases each expand to 9**9 (about 387 million) strings, here under a
# top-level key the schema does not know (the bomb must not depend on where it sits).
BOMB = """\
cases: []
x-lol:
  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
  i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""

# Parses one file under a 2 GB address-space limit and prints the error and the seconds it took, so that a
# regression fails this test instead of taking the machine.
PARSE_BOUNDED = """\
import resource, sys, time
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))
from pytest_specdec.yaml_source import load_yaml
start = time.perf_counter()
try:
    load_yaml(Path(sys.argv[1]))
    print("accepted")
except MemoryError:
    print("MemoryError")
except Exception as error:
    print(f"{type(error).__name__}: {error}")
print(f"{time.perf_counter() - start:.3f}")
"""


def _parse_in_subprocess(path: Path) -> tuple[str, float]:
    try:
        done = subprocess.run(
            [sys.executable, "-c", PARSE_BOUNDED, str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"parsing {path.name} ran past 30 s")
    assert done.returncode == 0, done.stderr
    message, seconds = done.stdout.strip().rsplit("\n", 1)
    return message, float(seconds)


def test_a_billion_laughs_file_is_refused_at_once_with_bounded_memory(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB.encode()) < 450
    message, seconds = _parse_in_subprocess(path)
    assert message == (
        f"SuiteError: {path}:7: x-lol.e[5]: YAML aliases expand the suite by more than 50,000 values (this one by "
        "7,381; a 'billion laughs' file?): write the values out or use fewer aliases"
    )
    assert seconds < 0.5


def test_a_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("cases:\n  - &a [1, *a]\n")
    message, _ = _parse_in_subprocess(path)
    assert message == (
        f"SuiteError: {path}:2: cases[0][1]: a YAML alias refers to a value that contains it (a recursive "
        "structure): write the value out"
    )


def test_ordinary_anchors_aliases_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            common: &common {device: cpu, k: [1, 2]}
            items:
              - *common
              - {<<: *common, k: 4}
              - <<: *common
                device: cuda
            """
        )
    )
    doc = load_yaml(path)
    assert doc.data["items"] == [
        {"device": "cpu", "k": [1, 2]},
        {"device": "cpu", "k": 4},
        {"device": "cuda", "k": [1, 2]},
    ]
    # Lines are those written: an alias item is on its own line, a merged-in key takes its mapping's.
    assert doc.line(("items", 0)) == 3
    assert doc.line(("items", 0, "k")) == 3
    assert doc.line(("items", 1, "k")) == 4
    assert doc.line(("items", 2, "device")) == 6
    assert doc.line(("items", 2, "k")) == 5


def test_aliases_may_repeat_values_up_to_the_bound(tmp_path):
    path = tmp_path / "many.yaml"
    ten = "[" + ", ".join(["x"] * 9) + "]"
    path.write_text(f"a: &a {ten}\nb: [{', '.join(['*a'] * 4000)}]\n")  # 4,000 aliases of 10 nodes: 40,000
    assert len(load_yaml(path).data["b"]) == 4000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: {x: 1, x: 2}\n", ":1: a.x: duplicate key 'x' (first written on line 1)"),
        ("c: &c {x: 1}\nd: {<<: *c, y: 2, y: 3}\n", ":2: d.y: duplicate key 'y' (first written on line 2)"),
    ],
)
def test_a_key_written_twice_in_one_mapping_is_an_error(tmp_path, text, expected):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError) as error:
        load_yaml(path)
    assert str(error.value).startswith(f"{path}{expected}")
