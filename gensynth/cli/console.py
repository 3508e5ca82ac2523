"""Rich consoles for the CLI."""
from __future__ import annotations

import sys

from rich.console import Console


def table_console(**kwargs) -> Console:
    """A console for tables: the terminal's width on a TTY, 160 columns in pipes and logs (no cramped wrapping)."""
    return Console(width=None if sys.stdout.isatty() else 160, **kwargs)
