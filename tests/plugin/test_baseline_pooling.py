"""Repeated baseline updates at one clean commit pool each case's speedup (the median of the last five runs)."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest
from records import HERE, record

from pytest_specdec.baselines import SPEEDUP_SAMPLES, load_baselines, write_baselines
from pytest_specdec.machine import commit_info

CLEAN = {"commit": {"id": "c0ffee", "dirty": False}}
RECORD = record(commit="c0ffee")


def update(path, speedup: float, header=CLEAN, **changes):
    record = dataclasses.replace(RECORD, speedup=speedup, **changes)
    return write_baselines(
        path, suite="s", machine_class=HERE.machine_class, records={"c": record}, refused=[], header=header
    )


def test_updates_at_one_clean_commit_keep_the_median_of_the_last_five(tmp_path):
    path = tmp_path / "s.json"
    first = update(path, 1.50)
    assert first.pooled == () and load_baselines(path)["c"].speedup_samples == (1.5,)
    second = update(path, 1.30)
    assert second.pooled == ("c",) and load_baselines(path)["c"].speedup == pytest.approx(1.40)
    for speedup in (1.90, 1.45, 1.42, 1.44):
        update(path, speedup)
    entry = load_baselines(path)["c"]
    assert entry.speedup_samples == (1.30, 1.90, 1.45, 1.42, 1.44)  # the oldest of six dropped
    assert len(entry.speedup_samples) == SPEEDUP_SAMPLES and entry.speedup == pytest.approx(1.44)
    assert json.loads(path.read_text())["cases"]["c"]["speedup"] == pytest.approx(1.44)


@pytest.mark.parametrize(
    ("header", "changes"),
    [
        ({"commit": {"id": "c0ffee", "dirty": True}}, {}),  # uncommitted changes: the code may differ
        ({"commit": {"id": None}}, {"commit": None}),  # outside git: nothing says the code is the same
        (CLEAN, {"commit": "beef"}),  # another commit
        (CLEAN, {"digest": "e"}),  # the case's definition changed
        (CLEAN, {"environment": dataclasses.replace(HERE, torch="2.11")}),  # other software
    ],
    ids=["dirty", "no-git", "other-commit", "other-definition", "other-software"],
)
def test_any_other_update_starts_the_samples_over(tmp_path, header, changes):
    path = tmp_path / "s.json"
    update(path, 1.50)
    again = update(path, 1.10, header=header, **changes)
    entry = load_baselines(path)["c"]
    assert again.pooled == () and entry.speedup == 1.10 and entry.speedup_samples == (1.10,)


def test_the_autoregressive_case_has_no_samples(tmp_path):
    path = tmp_path / "s.json"
    update(path, 1.0)
    write_baselines(
        path,
        suite="s",
        machine_class=HERE.machine_class,
        records={"ar": dataclasses.replace(RECORD, speedup=None)},
        refused=[],
        header=CLEAN,
    )
    assert load_baselines(path)["ar"].speedup is None and load_baselines(path)["ar"].speedup_samples == ()


def test_a_rewritten_baseline_file_does_not_make_the_checkout_dirty(tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "s.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "start", "--allow-empty")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "files")
    (tmp_path / "baselines" / "s.json").write_text('{"updated": true}')
    assert commit_info(tmp_path, tmp_path / "baselines")["dirty"] is False  # repeated updates still pool
    assert commit_info(tmp_path)["dirty"] is True
    (tmp_path / "code.py").write_text("x = 2\n")
    assert commit_info(tmp_path, tmp_path / "baselines")["dirty"] is True  # the code changed: no pooling
