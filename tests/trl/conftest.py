"""The TRL tests reuse the tiny models of tests/hf and tests/train."""

import sys
from pathlib import Path

for folder in ("hf", "train"):
    sys.path.insert(0, str(Path(__file__).parents[1] / folder))
