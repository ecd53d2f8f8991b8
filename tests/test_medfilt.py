"""pipeline.medfilt against scipy.signal.medfilt, the function every reference calls: same values, bit for bit."""
import warnings

import numpy as np
import pytest
from scipy import signal

from pipeline.errors import InputError
from pipeline.medfilt import medfilt


@pytest.mark.parametrize("length", [1, 5, 12, 25, 26, 400])
@pytest.mark.parametrize("kernel", [1, 3, 13, 25])
def test_same_values_as_scipy_signal(length, kernel):
    rng = np.random.default_rng(length * 100 + kernel)
    for values in (rng.normal(0, 3, length),                        # float64, like the sync confidence
                   rng.normal(0, 3, length).astype(np.float32),
                   rng.integers(-5, 5, length).astype(np.float64),  # many ties
                   np.abs(rng.normal(200, 40, length))):            # all positive: the zero padding shows at the ends
        with warnings.catch_warnings():  # scipy warns when the kernel is longer than the series
            warnings.simplefilter("ignore")
            expected = signal.medfilt(values, kernel_size=kernel)
        got = medfilt(values, kernel)
        assert got.dtype == expected.dtype
        assert got.tobytes() == expected.tobytes()


def test_zero_padding_at_the_ends():
    # kernel 3 over [5, 5, 5]: the ends see one padded 0, median 5; over [5, 1, 5] the middle is 5
    assert medfilt(np.array([5.0, 5.0, 5.0]), 3).tolist() == [5.0, 5.0, 5.0]
    assert medfilt(np.array([5.0, 1.0, 5.0]), 3).tolist() == [1.0, 5.0, 1.0]
    assert medfilt(np.array([7.0, 8.0]), 5).tolist() == [0.0, 0.0]  # a kernel longer than the series


@pytest.mark.parametrize("kernel", [0, 2, 24, -3])
def test_even_or_empty_kernel_is_an_input_error(kernel):
    with pytest.raises(InputError, match="odd kernel"):
        medfilt(np.zeros(10), kernel)

