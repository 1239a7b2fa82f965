"""Fixtures of the trainer tests: tiny random causal LMs saved as local model directories."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_testkit import save_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_teacher"), seed=1)


@pytest.fixture(scope="session")
def tiny_reward_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with a one-score head (an untrained reward model), saved."""
    from lmloss.train.model_loading import load_pretrained
    from lmloss.train.reward_model import from_causal_lm

    causal, tokenizer = load_pretrained(str(tiny_model))
    path = tmp_path_factory.mktemp("tiny_reward_model")
    from_causal_lm(causal, tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
