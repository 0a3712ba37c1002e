"""The exit codes of the ``ownership-ctx`` command and of every command registered with it."""

from __future__ import annotations

from typing import Final

__all__ = ["EXIT_BREACHED", "EXIT_OK", "EXIT_USAGE"]

EXIT_OK: Final = 0
#: A threshold was breached (coverage above ``--max-unattributed``, audit not ready).
EXIT_BREACHED: Final = 1
#: Anything wrong with the input or the environment, said in one line on stderr.
EXIT_USAGE: Final = 2
