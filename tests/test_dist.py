"""Device and rank plumbing shared by the stages."""

from __future__ import annotations

import pytest
import torch

from spurious._dist import all_sum, dist_info, resolve_device


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_single_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = dist_info()
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True)
    assert all_sum(7) == 7


def test_model_device_errors() -> None:
    from conftest import tiny_classifier
    from spurious.models import Classifier

    clf = tiny_classifier()
    with pytest.raises(ValueError, match="unknown device"):
        Classifier.from_module(clf.model, clf.preprocessing, device="tpu")
