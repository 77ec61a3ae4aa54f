"""N-MNIST split lists (``<recording> <class>`` lines after ``#`` comments), read for training and for the device alike.

No numpy, no torch. Recording names must lie beside the list (no folders: a list must not make a command read files
nobody named); classes are whole numbers (below ``classes`` when given). Errors give the line number and what was
expected, never the line itself."""
from __future__ import annotations

from pathlib import Path


def read_split_list(path, error: type[Exception], classes: int | None = None) -> list[tuple[str, int]]:
    """``(recording, class)`` per line of the split list ``path``; ``error`` (one line) for anything else."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: not a text split list (expected '<recording> <class>' lines)") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the split list ({exc.strerror or type(exc).__name__})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or line.lstrip().startswith("#"):
            continue
        if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdigit()) or len(parts[1]) > 6:
            raise error(f"{path}:{n}: expected 'sample<TAB>class' (a recording name and a whole-number class)")
        if classes is not None and int(parts[1]) >= classes:
            raise error(f"{path}:{n}: class {int(parts[1])} is outside 0..{classes - 1}")
        if "/" in parts[0] or "\\" in parts[0] or parts[0] in (".", ".."):
            raise error(f"{path}:{n}: recording names must not leave the list's folder")
        rows.append((parts[0], int(parts[1])))
    return rows
