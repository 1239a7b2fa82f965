"""The engine's backend chosen per call (``with lmloss.backend(...)``), besides the
process-wide ``LMLOSS_BACKEND``: the block wins inside, the variable rules outside."""

from __future__ import annotations

import threading

import pytest
import torch

import lmloss
from lmloss.stats.backend import BACKEND_VARIABLE, backend_setting

H, W, Y = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 2, 3, 4])


def test_the_block_overrides_the_variable(monkeypatch):
    monkeypatch.setenv(BACKEND_VARIABLE, "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=f"{BACKEND_VARIABLE}=triton"):
        lmloss.token_stats(H, W, Y)  # triton on CPU tensors without the interpreter
    with lmloss.backend("torch"):
        assert backend_setting() == "torch"
        stats = lmloss.token_stats(H, W, Y)
    want = torch.log_softmax(H @ W.T, -1).gather(1, Y[:, None]).squeeze(1)
    torch.testing.assert_close(stats.logp, want)
    assert backend_setting() == "triton"  # restored when the block ends


def test_a_block_asking_for_triton_is_named_in_the_refusal(monkeypatch):
    monkeypatch.setenv(BACKEND_VARIABLE, "torch")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with lmloss.backend("triton"), pytest.raises(ValueError, match=r"lmloss.backend\('triton'\)"):
        lmloss.token_stats(H, W, Y)
    lmloss.token_stats(H, W, Y)  # the variable again


def test_blocks_nest_and_stay_in_their_thread(monkeypatch):
    monkeypatch.delenv(BACKEND_VARIABLE, raising=False)
    seen = []
    with lmloss.backend("torch"):
        with lmloss.backend("triton"):
            assert backend_setting() == "triton"
            thread = threading.Thread(target=lambda: seen.append(backend_setting()))
            thread.start()
            thread.join()
        assert backend_setting() == "torch"
    assert backend_setting() == "auto" and seen == ["auto"]


def test_an_unknown_backend_is_refused():
    refused = pytest.raises(
        ValueError, match="backend must be one of auto, torch, triton; got 'cuda'"
    )
    with refused, lmloss.backend("cuda"):
        pass
