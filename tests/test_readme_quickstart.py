"""The README's Quick start runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs():
    text = README.read_text()
    quick_start = text[text.index("## Quick start") :]
    code = re.search(r"```python\n(.*?)```", quick_start, flags=re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["out"].loss.ndim == 0 and namespace["dpo"].loss.ndim == 0
    assert namespace["hidden"].grad is not None
