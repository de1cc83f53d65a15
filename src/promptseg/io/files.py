"""Finding the image files a command was given: files, folders walked recursively, glob patterns."""

from __future__ import annotations

import glob
import os
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def collect_images(inputs: list[str | Path]) -> tuple[Path, list[Path]]:
    """(root, files): image files from `inputs` (files, folders walked recursively, glob patterns), each once,
    sorted by their path relative to `root`. A file named directly is taken whatever its suffix (an unreadable one
    is reported later); files found in folders and globs must end in one of `IMAGE_SUFFIXES` (any case).

    Raises:
        FileNotFoundError: an input that is neither a file, a folder nor a glob matching something.
        ValueError: no image found.
    """
    found: list[Path] = []
    folders: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            folders.append(path)
            found += [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        else:
            matches = [Path(p) for p in glob.glob(str(item), recursive=True)]
            if not matches:
                raise FileNotFoundError(f"{item}: no such file or folder, and no file matches it as a pattern")
            found += [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    files = sorted({p.resolve() for p in found})
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {[str(i) for i in inputs]}")
    if len(folders) == 1 and len(inputs) == 1:
        root = folders[0].resolve()
    else:
        root = Path(os.path.commonpath([str(p.parent) for p in files]))
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    return root, files
