from __future__ import annotations

import pytest
import torch

from specdec.config import AcceptanceConfig, AdaptiveKConfig, GenerationConfig, Policy, SpeculationConfig
from specdec.device import resolve_device, resolve_dtype
from specdec.errors import ConfigError, DeviceError
from specdec.k_control import AdaptiveK, FixedK, make_controller
from specdec.sampling import logits_to_probs


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SpeculationConfig(k=0), "k must be an integer >= 1"),
        (lambda: GenerationConfig(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
        (lambda: GenerationConfig(temperature=-1), "temperature must be a finite number >= 0, got -1"),
        (lambda: GenerationConfig(top_p=1.5), "top_p must be in (0, 1]"),
        (lambda: AcceptanceConfig(policy="sometimes"), "unknown acceptance policy 'sometimes'"),
        (lambda: AdaptiveKConfig(min_k=4, max_k=2), "max_k (2) must be >= min_k (4)"),
        (
            lambda: SpeculationConfig(k=9, adaptive=AdaptiveKConfig(max_k=8)),
            "k (9) must lie in the adaptive bounds",
        ),
    ],
)
def test_invalid_values_name_the_field(build, message):
    with pytest.raises(ConfigError) as error:
        build()
    assert message in str(error.value)


def test_policy_names_round_trip_and_say_which_are_lossy():
    assert AcceptanceConfig(policy="lossy-typical").policy is Policy.LOSSY_TYPICAL
    assert Policy.LOSSLESS.is_lossless
    assert not any(p.is_lossless for p in Policy if p.value.startswith("lossy-"))


def test_device_and_dtype_resolution_on_this_machine():
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    device = resolve_device("auto")
    expected = {"cpu": torch.float32, "mps": torch.float16}.get(device.type)
    if expected is not None:
        assert resolve_dtype("auto", device) == expected
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype 'float8'"):
        resolve_dtype("float8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no usable CUDA GPU"):
            resolve_device("cuda")


def test_adaptive_k_rises_with_acceptance_and_falls_without_it():
    controller = AdaptiveK(AdaptiveKConfig(window=2, step=1, target_acceptance=0.7, min_k=1, max_k=4), initial_k=2)
    for _ in range(2):
        controller.update(drafted=2, accepted=2)
    assert controller.next_k() == 3
    for _ in range(8):
        controller.update(drafted=3, accepted=3)
    assert controller.next_k() == 4  # capped at max_k
    for _ in range(20):
        controller.update(drafted=4, accepted=0)
    assert controller.next_k() == 1  # floored at min_k
    assert isinstance(make_controller(SpeculationConfig(k=3)), FixedK)


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    top2 = logits_to_probs(logits, GenerationConfig(temperature=1.0, top_k=2))
    torch.testing.assert_close(top2, torch.tensor([2 / 3, 1 / 3, 0.0, 0.0]))
    nucleus = logits_to_probs(logits, GenerationConfig(temperature=1.0, top_p=0.7))  # 0.5 + 0.25 reaches 0.7
    torch.testing.assert_close(nucleus, torch.tensor([2 / 3, 1 / 3, 0.0, 0.0]))
    assert logits_to_probs(logits, GenerationConfig(temperature=1.0, top_p=0.4))[0] == 1.0


def test_top_p_keeps_every_token_that_ties_with_the_last_one_kept():
    logits = torch.log(torch.tensor([0.4, 0.1, 0.2, 0.2, 0.1]))
    # 0.4, then 0.2 (mass before it 0.4 < 0.5) is the last kept: its twin is kept too, whatever order a sort gives
    nucleus = logits_to_probs(logits, GenerationConfig(temperature=1.0, top_p=0.5))
    torch.testing.assert_close(nucleus, torch.tensor([0.5, 0.0, 0.25, 0.25, 0.0]))
