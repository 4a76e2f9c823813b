"""The chapter's worked numbers (8.2, 8.2.1, 8.2.2 and the exercises of 8.9), on both kernels."""

from __future__ import annotations

import pytest
import torch

from cnnlab import ops
from cnnlab.ops import conv_output_length, resolve_padding

KERNELS = pytest.mark.parametrize("kernel", ["native", "reference"])


@KERNELS
def test_exercise_1_series_2_1_3_4_7_with_filter_1_0_1(kernel: str) -> None:
    x = torch.tensor([[[2.0, 1, 3, 4, 7]]])
    w = torch.tensor([[[1.0, 0, 1]]])
    with ops.kernels(kernel):  # type: ignore[arg-type]
        assert ops.conv(x, w, padding="half").tolist() == [[[1.0, 5, 5, 10, 4]]]  # zero padding
        assert ops.conv(x, w).tolist() == [[[5.0, 5, 10]]]  # valid: no padding


@KERNELS
@pytest.mark.parametrize("length, f", [(5, 3), (10, 1), (10, 5), (32, 5), (7, 7), (100, 11)])
def test_exercise_2_output_length_and_the_padding_that_keeps_it(kernel: str, length: int,
                                                                f: int) -> None:
    x, w = torch.randn(1, 1, length), torch.randn(1, 1, f)
    with ops.kernels(kernel):  # type: ignore[arg-type]
        assert ops.conv(x, w).shape[-1] == length - f + 1  # L - F + 1
        assert resolve_padding("half", (f,), (1,)) == ((f - 1) // 2,)  # (F - 1) / 2 per side
        assert ops.conv(x, w, padding=(f - 1) // 2).shape[-1] == length


@pytest.mark.parametrize("stride, fits", [(2, True), (3, False), (4, False), (5, True)])
def test_exercise_3_strides_on_a_13x13x64_volume_with_3x3x64_filters(stride: int,
                                                                     fits: bool) -> None:
    # (L - F) / S + 1 positions fit exactly only when S divides L - F = 10 (8.2.2, footnote 1)
    assert ((13 - 3) % stride == 0) == fits
    n = conv_output_length(13, 3, stride)
    assert n == (13 - 3) // stride + 1  # with floor: the last rows and columns go unused
    assert ((n - 1) * stride + 3 == 13) == fits  # the last filter position reaches the border
    y = ops.conv(torch.randn(1, 64, 13, 13), torch.randn(1, 64, 3, 3), stride=stride)
    assert y.shape == (1, 1, n, n)


@KERNELS
def test_fig_8_1_32x32x3_with_five_5x5x3_filters_gives_28x28x5(kernel: str) -> None:
    with ops.kernels(kernel):  # type: ignore[arg-type]
        y = ops.conv(torch.randn(1, 3, 32, 32), torch.randn(5, 3, 5, 5))
    assert y.shape == (1, 5, 28, 28)  # L_2 = B_2 = 32 - 5 + 1; depth = number of filters


@KERNELS
def test_8_2_1_half_padding_32_to_36_and_back_to_32(kernel: str) -> None:
    assert resolve_padding("half", (5, 5), (1, 1)) == (2, 2)  # (5 - 1) / 2 zeros on each side
    assert 32 + 2 * 2 == 36
    with ops.kernels(kernel):  # type: ignore[arg-type]
        y = ops.conv(torch.randn(1, 3, 32, 32), torch.randn(5, 3, 5, 5), padding="half")
    assert y.shape == (1, 5, 32, 32)


@KERNELS
@pytest.mark.parametrize("length, f", [(7, 3), (32, 5), (5, 1), (4, 4)])
def test_8_2_1_full_padding_grows_to_l_plus_f_minus_1(kernel: str, length: int, f: int) -> None:
    assert resolve_padding("full", (f,), (1,)) == (f - 1,)
    with ops.kernels(kernel):  # type: ignore[arg-type]
        y = ops.conv(torch.randn(1, 2, length, length), torch.randn(1, 2, f, f), padding="full")
    assert y.shape[-2:] == (length + f - 1, length + f - 1)


# Fig. 8.2's 7x7 input and 3x3 filter. The figure itself is not in the text; this grid is a
# reconstruction, and the text pins down the two products it spells out:
# 5x1 + 8x1 + 1x1 + 1x2 = 16 and 4x1 + 4x1 + 4x1 + 7x2 = 26 (multiplications by 0 omitted).
FIG_8_2_INPUT = [[6, 3, 4, 4, 5, 0, 3],
                 [4, 7, 4, 0, 4, 0, 4],
                 [7, 0, 2, 3, 4, 5, 2],
                 [3, 7, 5, 0, 3, 0, 7],
                 [5, 8, 1, 2, 5, 4, 2],
                 [8, 0, 1, 0, 6, 0, 0],
                 [6, 4, 1, 3, 0, 4, 5]]
FIG_8_2_FILTER = [[1, 0, 1],
                  [1, 0, 0],
                  [0, 0, 2]]


@KERNELS
def test_fig_8_2_the_two_worked_convolutions(kernel: str) -> None:
    x = torch.tensor(FIG_8_2_INPUT, dtype=torch.float32).view(1, 1, 7, 7)
    w = torch.tensor(FIG_8_2_FILTER, dtype=torch.float32).view(1, 1, 3, 3)
    with ops.kernels(kernel):  # type: ignore[arg-type]
        y = ops.conv(x, w)
    assert y.shape == (1, 1, 5, 5)  # 7 - 3 + 1 at stride 1
    assert y[0, 0, 4, 0] == 5 * 1 + 8 * 1 + 1 * 1 + 1 * 2 == 16  # window with corner (5, 1)
    assert y[0, 0, 1, 4] == 4 * 1 + 4 * 1 + 4 * 1 + 7 * 2 == 26  # window with corner (2, 5)


@KERNELS
def test_8_2_5_pooling_3x3_on_7x7_at_strides_1_and_2(kernel: str) -> None:
    # Fig. 8.4's sizes: (L - P) / S + 1 -> 5x5 at stride 1, 3x3 at stride 2
    x = torch.randn(1, 4, 7, 7)
    with ops.kernels(kernel):  # type: ignore[arg-type]
        assert ops.max_pool(x, 3, 1).shape == (1, 4, 5, 5)
        assert ops.max_pool(x, 3, 2).shape == (1, 4, 3, 3)  # depth is unchanged
