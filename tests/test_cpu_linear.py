"""The CPU linear (``specdec.kernels.cpu_linear``): what ``F.linear`` computes, through copies that follow their
weight."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F

from specdec.kernels import TORCH_KERNELS, cpu_linear
from specdec.kernels.cpu_linear import PACKED_MIN_ROWS, Linear, linear

packing = pytest.mark.skipif(not cpu_linear._packing[0], reason="this torch build has no oneDNN linear")


@pytest.mark.parametrize("rows", [0, 1, 2, 3, 5, 17])
@pytest.mark.parametrize("with_bias", [False, True])
def test_it_computes_what_f_linear_computes(rows: int, with_bias: bool) -> None:
    torch.manual_seed(rows)
    weight, bias = torch.randn(96, 40), torch.randn(96) if with_bias else None
    x = torch.randn(rows, 40)
    torch.testing.assert_close(linear(x, weight, bias), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    x3 = torch.randn(2, rows, 40)  # leading dimensions are kept
    torch.testing.assert_close(linear(x3, weight, bias), F.linear(x3, weight, bias), rtol=1e-5, atol=1e-5)


def test_transposed_keeps_to_one_copy_whatever_the_rows() -> None:
    torch.manual_seed(1)
    weight, bias = torch.randn(64, 32), torch.randn(64)
    for rows in (1, 3, 9):
        x = torch.randn(rows, 32)
        torch.testing.assert_close(linear(x, weight, bias, transposed=True), F.linear(x, weight, bias), rtol=1e-5,
                                   atol=1e-5)  # fmt: skip
    entry = cpu_linear._copies[id(weight)]
    assert entry.transposed is not None and entry.packed is None


def test_the_torch_kernel_set_uses_it_and_other_dtypes_take_f_linear_exactly() -> None:
    assert TORCH_KERNELS.linear is linear
    weight, x = torch.randn(8, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(linear(x, weight), F.linear(x, weight))


@packing
def test_a_row_scores_the_same_whatever_the_number_of_rows_beside_it() -> None:
    torch.manual_seed(0)
    weight, x = torch.randn(384, 256), torch.randn(24, 256)
    alone = linear(x[:PACKED_MIN_ROWS], weight)
    for rows in range(PACKED_MIN_ROWS, 25):
        assert torch.equal(linear(x[:rows], weight)[:PACKED_MIN_ROWS], alone), rows


def test_a_weight_changed_after_its_copies_were_made_is_read_again() -> None:
    torch.manual_seed(0)
    weight = torch.randn(64, 32)
    xs = [torch.randn(rows, 32) for rows in (1, 4)]  # both copies
    for x in xs:
        linear(x, weight)
    with torch.no_grad():
        weight.mul_(-2)  # in place: the version counter moves
    for x in xs:
        torch.testing.assert_close(linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-5)
    weight.data = torch.randn(64, 32)  # new storage, as Module.to does
    for x in xs:
        torch.testing.assert_close(linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-5)


def test_copies_are_freed_with_their_weight_and_stop_at_the_budget(monkeypatch) -> None:
    gc.collect()  # weights that earlier tests left to the collector free their copies now, not mid-test
    weight = torch.randn(128, 64)
    before = cpu_linear._bytes[0]
    linear(torch.randn(1, 64), weight)
    assert cpu_linear._bytes[0] == before + weight.numel() * 4
    del weight
    gc.collect()
    assert cpu_linear._bytes[0] == before
    monkeypatch.setattr(cpu_linear, "MAX_COPY_BYTES", before)  # no room: F.linear, no copy
    weight = torch.randn(128, 64)
    x = torch.randn(5, 64)
    torch.testing.assert_close(linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-5)
    assert cpu_linear._bytes[0] == before


def test_the_module_trains_like_nn_linear() -> None:
    torch.manual_seed(0)
    ours, theirs = Linear(16, 8), torch.nn.Linear(16, 8)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 16)
    ours(x).square().sum().backward()
    theirs(x).square().sum().backward()
    assert ours.weight.grad is not None and theirs.weight.grad is not None
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
