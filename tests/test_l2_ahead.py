"""The L2 prefetch's host side: which bytes an attention launch asks for, and where it runs at all. (That it
changes no result is checked on CUDA: tests/test_gpu.py::test_l2_prefetch_changes_no_result.)"""

from __future__ import annotations

import pytest
import torch

from specdec.kernels import l2_ahead


def test_spans_take_the_weights_in_order_up_to_the_budget():
    o = torch.zeros(64, 64, dtype=torch.bfloat16)  # 8192 bytes
    gate_up = torch.zeros(256, 64, dtype=torch.bfloat16)  # 32768 bytes
    spans = l2_ahead.spans((o, gate_up), 8192 + 1000)
    assert [(w.data_ptr(), size) for w, size in spans] == [(o.data_ptr(), 8192), (gate_up.data_ptr(), 992)]
    assert [size for _, size in l2_ahead.spans((o, gate_up), 10**9)] == [8192, 32768]  # no more than each holds
    assert [size for _, size in l2_ahead.spans((o, gate_up), 8192)] == [8192]
    assert l2_ahead.spans((o, gate_up), 0) == []


def test_spans_stop_at_the_kernels_span_count():
    weights = tuple(torch.zeros(16, dtype=torch.float32) for _ in range(l2_ahead.MAX_SPANS + 2))
    assert len(l2_ahead.spans(weights, 10**6)) == l2_ahead.MAX_SPANS


def test_a_strided_weight_is_refused_by_name_of_its_strides():
    with pytest.raises(ValueError, match="contiguous"):
        l2_ahead.spans((torch.zeros(8, 8).t(),), 1024)


def test_no_prefetch_off_hopper(monkeypatch):
    monkeypatch.setenv(l2_ahead.ENV_BUDGET, "16")
    assert l2_ahead.budget_bytes(torch.device("cpu")) == 0


def test_spans_skip_what_an_earlier_launch_asked_for():
    o = torch.arange(64 * 64, dtype=torch.float32).view(64, 64)  # 16384 bytes
    gate_up = torch.arange(128 * 64, dtype=torch.float32).view(128, 64)  # 32768 bytes
    (first, size), *rest = l2_ahead.spans((o, gate_up), 4096, skip=16384 + 1000)  # 1000 rounds down to 992
    assert not rest and size == 4096
    assert first.data_ptr() == gate_up.data_ptr() + 992 and first[0].item() == 992 / 4
    assert l2_ahead.spans((o, gate_up), 4096, skip=16384 + 32768) == []
    (first, size), (second, size2) = l2_ahead.spans((o, gate_up), 8192, skip=16384 - 4096)
    assert (first.data_ptr(), size, second.data_ptr(), size2) == (o.data_ptr() + 12288, 4096, gate_up.data_ptr(), 4096)
    assert l2_ahead.tail_span(gate_up, 0) is None


def test_a_setting_that_is_not_a_number_is_named(monkeypatch):
    monkeypatch.setenv(l2_ahead.ENV_TAIL, "four")
    monkeypatch.setattr(l2_ahead, "_capable", lambda index: True)
    with pytest.raises(ValueError, match="SPECDEC_L2_TAIL_MB='four'"):
        l2_ahead.tail_bytes(torch.device("cuda", 0))
