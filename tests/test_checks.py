"""_checks and _tensors: the shared argument checks, one wording per mistake."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spurious._checks import int_at_least, positive_int
from spurious._tensors import check_images


def test_positive_int_accepts_python_and_numpy_integers() -> None:
    assert positive_int("n", 3) == 3
    value = positive_int("n", np.int64(7))
    assert value == 7 and type(value) is int


@pytest.mark.parametrize("bad", [0, -2, True, 2.0, "3", None])
def test_positive_int_refuses_the_rest(bad: object) -> None:
    with pytest.raises(ValueError, match=rf"n must be a positive integer, got {bad!r}; hint$"):
        positive_int("n", bad, "; hint")


def test_int_at_least() -> None:
    assert int_at_least("k", np.int32(4), 4) == 4
    for bad in (3, False, 4.5):
        with pytest.raises(ValueError, match=rf"k must be an integer >= 4, got {bad!r}"):
            int_at_least("k", bad, 4)


def test_check_images_passes_a_batch_through() -> None:
    x = torch.rand(2, 3, 5, 4)
    assert check_images(x) is x
    assert check_images(torch.rand(3, 7), "z", rgb=False).shape == (3, 7)


def test_check_images_errors() -> None:
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor \[N, 3, H, W\]"):
        check_images(np.zeros((1, 3, 2, 2)))
    with pytest.raises(TypeError, match=r"x must be a float tensor .* float torch.Tensor"):
        check_images(torch.zeros((1, 3, 2, 2), dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"x must be a non-empty batch of RGB images \[N, 3, H, W\], got shape \(3, 2, 2\)"):
        check_images(torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match=r"x must be a non-empty batch of RGB images .* got shape \(1, 1, 2, 2\)"):
        check_images(torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"x0 must be a non-empty batch \[N, \.\.\.\]"):
        check_images(torch.zeros(0, 3), "x0", rgb=False)
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0, 0, 0] = -1.0
    with pytest.raises(ValueError, match=r"x must lie in the box \[0, 1\] .* got values in \[-1, 0\]"):
        check_images(x)
