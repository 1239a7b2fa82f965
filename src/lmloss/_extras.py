"""One line for a feature used without its optional dependencies (a pip "extra").

lmloss needs only torch; ``lmloss.hf``, the trainer's commands and ``lmloss.trl`` need the
``hf`` or ``trl`` extra. lmloss is installed from a clone, not from a package index, so the
message says how to install the extra there.
"""

from __future__ import annotations


class MissingExtraError(ModuleNotFoundError):
    """A feature's optional dependency is not installed; the message names the extra."""


def is_missing_dependency(error: ModuleNotFoundError) -> bool:
    """The import failed for a third-party module (not a bug inside lmloss)."""
    return bool(error.name) and error.name.split(".")[0] != "lmloss"


def missing_extra(error: ModuleNotFoundError, feature: str, extra: str) -> MissingExtraError:
    """The one-line error for ``feature`` run without the ``extra`` that holds ``error.name``."""
    return MissingExtraError(
        f"{feature} needs the {extra!r} extra (no module {error.name!r}): in the lmloss "
        f"clone, pip install -e '.[{extra}]' (or a wheel built there, with [{extra}])",
        name=error.name,
    )
