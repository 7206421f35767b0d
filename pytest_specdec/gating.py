"""Comparing a case with its baseline: per-metric tolerances, checks, and the verdict.

Rules (``docs/suites.md`` explains them):

- acceptance rate (absolute) and tokens per target forward (relative) must stay within their tolerance: they are
  deterministic for a given seed, so only a real change moves them (against a baseline recorded with other
  software or another device model, whose rounding may flip a near-tied argmax, the tolerance is tripled);
- the greedy output hash must be identical when torch, transformers and the device model match the baseline's
  (other software may round differently: then it is reported, not gated); sampled outputs are reported only, since a
  faster sampler may legitimately draw other tokens from the same distribution; so are the outputs of synthetic
  acceptance, which are not the target's;
- the speedup over the same run's autoregressive case (measured in rounds paired with that case's, from each
  step's fastest time: ``pytest_specdec/measurement.py``) must not fall by more than its tolerance, 10% by default
  (relative; tripled against a baseline of other software or another device model). A case that regresses on timing
  alone is measured a second time and judged on that attempt (``session.py``): interference rarely spans both;
- tokens/s is compared only on the same machine class, device model and software, with a generous tolerance.

A fall beyond tolerance is a regression (the case fails); a rise beyond it is an improvement (reported).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pytest_specdec.measurement import CaseRecord


@dataclass(frozen=True)
class Tolerances:
    """How far a metric may move from its baseline before the case fails.

    Acceptance and tokens per forward repeat exactly on the same software; their tolerances only absorb the rounding
    of other versions. The speedup tolerance is tight enough that a 15% loss fails and loose enough that unchanged
    code passes, as measured by ``scripts/gate/experiment.py`` on the CI machine class (docs/suites.md, "How tight
    the gate is"); tokens/s, an absolute time, keeps a generous one.
    """

    acceptance_rate: float = 0.02  # absolute: |now - baseline|
    tokens_per_forward: float = 0.03  # relative
    speedup: float = 0.10  # relative fall of the paired steady speedup (docs/suites.md: how tight the gate is)
    tokens_per_second: float = 0.5  # relative fall, same machine class, device model and software only


CROSS_ENVIRONMENT_FACTOR = 3.0  # tolerances widen this much against another torch, transformers or device model
OTHER_SOFTWARE_NOTE = (
    f"baseline of other software or device: output hash not gated, acceptance, tokens/forward and speedup "
    f"tolerances x{CROSS_ENVIRONMENT_FACTOR:g}"
)


class Outcome(str, Enum):
    OK = "ok"
    REGRESSED = "regressed"
    IMPROVED = "improved"
    CHANGED = "changed"  # differs, but not gated (reported)
    NOT_COMPARED = "not compared"


@dataclass(frozen=True)
class Check:
    metric: str
    outcome: Outcome
    baseline: float | str | None
    now: float | str | None
    tolerance: str  # as the message shows it: "±0.02", "-25%", "exact"
    note: str = ""

    def describe(self) -> str:
        text = f"{self.metric}: baseline {_show(self.baseline)}, now {_show(self.now)}, tolerance {self.tolerance}"
        return f"{text} ({self.note})" if self.note else text


class Status(str, Enum):
    PASS = "pass"
    REGRESSION = "REGRESSION"
    IMPROVED = "improved"
    NO_BASELINE = "no baseline"
    STALE = "stale baseline"


@dataclass(frozen=True)
class Verdict:
    status: Status
    checks: tuple[Check, ...] = ()
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status is Status.REGRESSION

    def regressions(self) -> list[Check]:
        return [c for c in self.checks if c.outcome is Outcome.REGRESSED]

    def message(self, baseline_file: str) -> str:
        """What a failing case prints: a first line naming the regressed metrics, then every check in detail."""
        first = "regressed against " + baseline_file + ": " + ", ".join(c.metric for c in self.regressions())
        lines = [first] + [f"  {c.describe()}" for c in self.regressions()]
        others = [c for c in self.checks if c.outcome in (Outcome.IMPROVED, Outcome.CHANGED, Outcome.NOT_COMPARED)]
        lines += [f"  ({c.outcome.value}) {c.describe()}" for c in others]
        if self.note:
            lines.append(f"  ({self.note})")
        return "\n".join(lines)

    def summary(self) -> str:
        """One short cell for the report table (with the note, e.g. that the baseline is of other software)."""
        text = self.status.value
        if self.status in (Status.REGRESSION, Status.IMPROVED):
            wanted = Outcome.REGRESSED if self.status is Status.REGRESSION else Outcome.IMPROVED
            text += ": " + ", ".join(c.metric for c in self.checks if c.outcome is wanted)
        return text + (f" ({self.note})" if self.note else "")


def _show(value: float | str | None) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _missing(metric: str, baseline: float | None, now: float | None, shown: str) -> Check | None:
    if baseline is None and now is None:
        return Check(metric, Outcome.OK, None, None, shown, "not applicable")  # e.g. acceptance without a draft
    if baseline is None or now is None:
        return Check(metric, Outcome.NOT_COMPARED, baseline, now, shown, "missing on one side")
    return None


def _absolute(metric: str, baseline: float | None, now: float | None, tolerance: float) -> Check:
    shown = f"±{tolerance:g}"
    missing = _missing(metric, baseline, now, shown)
    if missing is not None or baseline is None or now is None:
        return missing or Check(metric, Outcome.NOT_COMPARED, baseline, now, shown)
    if now < baseline - tolerance:
        return Check(metric, Outcome.REGRESSED, baseline, now, shown)
    if now > baseline + tolerance:
        return Check(metric, Outcome.IMPROVED, baseline, now, shown)
    return Check(metric, Outcome.OK, baseline, now, shown)


def _relative(metric: str, baseline: float | None, now: float | None, tolerance: float) -> Check:
    shown = f"-{tolerance:.0%}"
    missing = _missing(metric, baseline, now, shown)
    if missing is not None or baseline is None or now is None:
        return missing or Check(metric, Outcome.NOT_COMPARED, baseline, now, shown)
    if baseline <= 0:
        return Check(metric, Outcome.NOT_COMPARED, baseline, now, shown, "baseline is not positive")
    floor = baseline * (1.0 - tolerance)
    if now < floor:
        return Check(metric, Outcome.REGRESSED, baseline, now, shown, f"fails below {floor:.4g}")
    if now > baseline * (1.0 + tolerance):
        return Check(metric, Outcome.IMPROVED, baseline, now, shown)
    return Check(metric, Outcome.OK, baseline, now, shown)


def compare(now: CaseRecord, baseline: CaseRecord | None, tolerances: Tolerances) -> Verdict:
    """The verdict of ``now`` against ``baseline`` (``None``: no baseline recorded for this case)."""
    if baseline is None:
        return Verdict(Status.NO_BASELINE)
    if baseline.digest != now.digest:
        return Verdict(Status.STALE, note="the suite entry changed since it was recorded")
    same_software = now.environment.same_software(baseline.environment)
    widen = 1.0 if same_software else CROSS_ENVIRONMENT_FACTOR  # other rounding may flip a near-tied argmax
    checks = [
        _absolute("acceptance_rate", baseline.acceptance_rate, now.acceptance_rate, tolerances.acceptance_rate * widen),
        _relative(
            "tokens_per_forward",
            baseline.tokens_per_forward,
            now.tokens_per_forward,
            tolerances.tokens_per_forward * widen,
        ),
    ]
    if baseline.output_hash == now.output_hash:
        checks.append(Check("output_hash", Outcome.OK, baseline.output_hash, now.output_hash, "exact"))
    elif now.synthetic or not now.greedy:
        why = "synthetic acceptance: not gated" if now.synthetic else "sampled: not gated"
        checks.append(Check("output_hash", Outcome.CHANGED, baseline.output_hash, now.output_hash, "exact", why))
    elif not same_software:
        note = "other software or device, not gated: " + now.environment.differences(baseline.environment)
        checks.append(Check("output_hash", Outcome.CHANGED, baseline.output_hash, now.output_hash, "exact", note))
    else:
        note = "greedy output changed on the same software"
        checks.append(Check("output_hash", Outcome.REGRESSED, baseline.output_hash, now.output_hash, "exact", note))
    if now.speedup is not None or baseline.speedup is not None:
        checks.append(_relative("speedup", baseline.speedup, now.speedup, tolerances.speedup * widen))
    if now.environment.same_machine(baseline.environment):
        checks.append(
            _relative(
                "tokens_per_second", baseline.tokens_per_second, now.tokens_per_second, tolerances.tokens_per_second
            )
        )
    else:
        note = "other machine or software: " + now.environment.differences(baseline.environment)
        checks.append(
            Check(
                "tokens_per_second", Outcome.NOT_COMPARED, baseline.tokens_per_second, now.tokens_per_second, "-", note
            )
        )
    note = "" if same_software else OTHER_SOFTWARE_NOTE
    if any(c.outcome is Outcome.REGRESSED for c in checks):
        return Verdict(Status.REGRESSION, tuple(checks), note)
    if any(c.outcome is Outcome.IMPROVED for c in checks):
        return Verdict(Status.IMPROVED, tuple(checks), note)
    return Verdict(Status.PASS, tuple(checks), note)
