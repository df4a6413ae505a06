"""The consoles commands print through: on a terminal, rich's own (wrapped to the window); in a
pipe, a log file or a CI job, as wide as the content, so that every node name and number comes
out whole (rich would otherwise cut tables at 80 columns with an ellipsis)."""

from __future__ import annotations

from rich.console import Console, ConsoleDimensions

__all__ = ["WIDE", "output_console"]

WIDE = 4096  # columns off a terminal: tables take their natural width, lines are never wrapped


class _Console(Console):
    """A rich Console whose width is the window's on a terminal and WIDE anywhere else, decided
    at each print (the test runner and `| tee` swap stdout after the console was made)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(WIDE, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


def output_console(*, stderr: bool = False, **options) -> Console:
    """A console for a command's output (`stderr`: for its warnings); `options` go to rich's
    Console (file=... for a captured one)."""
    return _Console(highlight=False, stderr=stderr, **options)
