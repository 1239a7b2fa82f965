"""The TRL tests reuse the tiny models of tests/hf and tests/train."""

import sys
from pathlib import Path

import pytest

for folder in ("hf", "train"):
    sys.path.insert(0, str(Path(__file__).parents[1] / folder))

from train_testkit import save_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    """A tiny Llama with a character tokenizer, saved where TRL can load it by path."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)
