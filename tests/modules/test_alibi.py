import math

import pytest
import torch

from energy_lm.kernels.alibi import alibi_bias, alibi_slopes, check_alibi_mode


@pytest.mark.parametrize("heads", [8, 16])
def test_slopes_power_of_two_closed_form(heads):
    expected = torch.tensor([2.0 ** (-8.0 * h / heads) for h in range(1, heads + 1)])
    torch.testing.assert_close(alibi_slopes(heads), expected, rtol=0, atol=0)


def test_slopes_16_heads_start_at_2_to_minus_half():
    slopes = alibi_slopes(16)
    assert slopes[0].item() == pytest.approx(2 ** -0.5)
    assert slopes[-1].item() == pytest.approx(2 ** -8)


@pytest.mark.parametrize("heads", [12, 6, 20])
def test_slopes_non_power_of_two_rule(heads):
    # slopes of the lower power of two P, then every other slope of 2P
    p = 2 ** int(math.log2(heads))
    lower = [2.0 ** (-8.0 * h / p) for h in range(1, p + 1)]
    upper = [2.0 ** (-8.0 * h / (2 * p)) for h in range(1, 2 * p + 1)][0::2]
    expected = torch.tensor(lower + upper[: heads - p])
    torch.testing.assert_close(alibi_slopes(heads), expected, rtol=0, atol=0)


def test_slopes_12_heads_explicit_values():
    # P = 8: 2^-1 .. 2^-8, then 2P = 16 odd slopes 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
    expected = [2.0 ** -k for k in range(1, 9)] + [2.0 ** -(k + 0.5) for k in range(4)]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected), rtol=0, atol=0)


def test_shifted_row_zero_matches_methods():
    pos = torch.arange(5)
    bias = alibi_bias(torch.tensor([1.0]), pos, pos, "shifted")
    assert bias[0, 0].tolist() == [0.0, -0.5, -1.5, -2.5, -3.5]
    # looking back costs a full slope per step
    assert bias[0, 4].tolist() == [-4.0, -3.0, -2.0, -1.0, 0.0]


def test_symmetric_and_causal_matrices():
    pos = torch.arange(4)
    m = torch.tensor([0.5, 0.25])
    sym = alibi_bias(m, pos, pos, "symmetric")
    causal = alibi_bias(m, pos, pos, "causal")
    i, j = torch.meshgrid(pos, pos, indexing="ij")
    for h in range(2):
        torch.testing.assert_close(sym[h], -m[h] * (i - j).abs().float())
        torch.testing.assert_close(causal[h][j <= i], (-m[h] * (i - j).float())[j <= i])
    assert sym.dtype == torch.float32 and sym.shape == (2, 4, 4)


def test_bias_is_fp32_and_keeps_half_slope_at_long_range():
    # the reason the bias is fp32: at distance 2000 with the smallest slope of 12 heads
    # the shift of half a slope is below bf16's resolution
    slope = alibi_slopes(12)[7:8]  # 2^-8
    q = torch.tensor([0])
    k = torch.tensor([1999, 2000])
    bias = alibi_bias(slope, q, k, "shifted")
    assert bias.dtype == torch.float32
    assert bias[0, 0, 0] - bias[0, 0, 1] == pytest.approx(2 ** -8)
    assert (bias.bfloat16()[0, 0, 0] - bias.bfloat16()[0, 0, 1]).item() != pytest.approx(2 ** -8)


def test_incremental_queries_use_absolute_positions():
    pos = torch.arange(6)
    m = alibi_slopes(4)
    full = alibi_bias(m, pos, pos, "causal")
    last = alibi_bias(m, pos[-1:], pos, "causal")
    torch.testing.assert_close(last, full[:, -1:, :])


@pytest.mark.parametrize("mode,causal", [("shifted", True), ("symmetric", True), ("causal", False),
                                         ("diagonal", False)])
def test_wrong_mode_for_family_is_one_clear_line(mode, causal):
    with pytest.raises(ValueError) as err:
        check_alibi_mode(mode, causal)
    assert "\n" not in str(err.value) and mode in str(err.value)
