"""legion's distribution name and its optional parts (extras).

The package installs as ``legion-runtime`` (the name ``legion`` on PyPI is another
project); the command is ``legion`` and the import ``import legion``. A hint names both
ways to get an extra: from an index, and from a clone of the repository.
"""

from __future__ import annotations

DISTRIBUTION = "legion-runtime"


def install_hint(extra: str) -> str:
    """``pip install 'legion-runtime[EXTRA]' (in a clone: pip install -e '.[EXTRA]')``."""
    return f"pip install '{DISTRIBUTION}[{extra}]' (in a clone: pip install -e '.[{extra}]')"
