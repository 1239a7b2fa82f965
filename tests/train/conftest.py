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
