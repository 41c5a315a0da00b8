"""Small helpers every package shares. They live here, at the bottom of the import order (configs/ imports
nothing of ours and every package may import it), so there is one copy of each."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# Every still-image file suffix we read (lower case; cv2.imread decodes all of them). Sources, datasets,
# predict and the evaluation sets all use this one list, so an image one of them accepts, all accept.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pbm", ".pgm", ".ppm")


def did_you_mean(name: object, choices: Iterable[object], n: int = 3, cutoff: float = 0.5) -> str:
    """The hint for an unknown name: " Did you mean 'a' or 'b'?" (leading space), or "" when nothing is close.

    Callers still list every valid choice in the message: the hint only helps with typos."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=cutoff)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
