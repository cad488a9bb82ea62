"""Paired image-caption input, read so that pairing never depends on how files sort.

Three forms, each naming the image of every caption explicitly:

* a CSV or TSV file with a header holding ``image`` and ``caption`` columns (more columns are kept as
  payload); image paths are relative to the file's folder;
* a JSON Lines file of objects with ``image`` and ``caption`` keys (more keys are kept as payload);
* a folder where ``name.jpg`` pairs with ``name.txt`` (one caption per non-empty line).

An image may appear in several rows (one image, five captions): those pairs are one group. Unpaired inputs
(a folder or list of images, a file of texts) are read here too.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ._checks import check_field_name

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
_RESERVED = ("image", "caption")


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``2.jpg`` before ``10.jpg``."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), name


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder in natural order of their names."""
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=lambda p: natural_key(p.name))


def list_images(spec) -> list[Path]:
    """Image files of a folder (natural order: 2 before 10), or the paths a file lists one per line
    (relative to the file)."""
    source = Path(spec)
    if source.is_dir():
        paths = image_files(source)
        if not paths:
            raise ValueError(f"no image files in the folder {str(source)!r}")
        return paths
    if not source.is_file():
        raise ValueError(f"expected a folder of images or a file listing image paths, got {str(source)!r}, which "
                         "does not exist")
    lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"the list file {str(source)!r} names no image")
    return [p if p.is_absolute() else source.parent / p for p in map(Path, lines)]


def read_texts(spec) -> list[str]:
    """The non-empty lines of a UTF-8 file, one text each."""
    source = Path(spec)
    if not source.is_file():
        raise ValueError(f"expected a UTF-8 file with one text per line, got {str(source)!r}, which does not exist")
    try:
        return [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source}: expected UTF-8 text ({exc})") from None


@dataclass(frozen=True)
class Pairs:
    """Rows of (image file, caption), in input order, with the user's extra columns."""

    source: Path
    images: tuple  # Path per row, resolved against the source's folder
    captions: tuple  # str per row
    columns: dict = field(default_factory=dict)  # name -> tuple of one JSON value per row
    labels: tuple = ()  # where each row came from ("pairs.csv line 3"), for messages
    skipped: tuple = ()  # messages of rows left out with skip_errors

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def root(self) -> Path:
        """The folder image paths are shown relative to."""
        return self.source if self.source.is_dir() else self.source.parent

    def relative(self, path: Path) -> str:
        """``path`` as the input named it: relative to ``root`` where it lies below it."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


def read_pairs(path, *, skip_errors: bool = False) -> Pairs:
    """Read pairs from a CSV/TSV/JSONL file or a folder of ``name.jpg`` + ``name.txt``.

    A row whose image file is missing, or that lacks an image or a caption, is an error naming the row; with
    ``skip_errors`` it is left out and described in ``skipped`` (the other rows stay paired as written).
    """
    source = Path(path)
    if source.is_dir():
        rows, labels, problems = _folder_rows(source)
    elif not source.is_file():
        raise ValueError(f"pairs must be a .csv, .tsv or .jsonl file or a folder of name.jpg + name.txt, got "
                         f"{str(source)!r}, which does not exist")
    else:
        suffix = source.suffix.lower()
        if suffix not in (".csv", ".tsv", ".jsonl"):
            raise ValueError(f"pairs must be a .csv, .tsv or .jsonl file or a folder, got {str(source)!r}")
        try:
            text = source.read_bytes().decode("utf-8-sig")  # bytes: a quoted "\r" in a caption stays one
        except UnicodeDecodeError as exc:
            raise ValueError(f"{source}: expected UTF-8 text ({exc})") from None
        reader = _jsonl_rows if suffix == ".jsonl" else _table_rows
        rows, labels, problems = reader(source, text)
    root = source if source.is_dir() else source.parent
    kept, keep_labels, skipped = [], [], list(problems)
    for row, label in zip(rows, labels):
        problem = _row_problem(row, root)
        if problem:
            skipped.append(f"{label}: {problem}")
        else:
            kept.append(row)
            keep_labels.append(label)
    if skipped and not skip_errors:
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise ValueError(f"{skipped[0]}{more}; fix the input or pass --skip-errors to leave such rows out")
    if not kept:
        raise ValueError(f"{source} holds no usable image-caption pair")
    names = [k for k in kept[0] if k not in _RESERVED]
    images = tuple(_resolve(row["image"], root) for row in kept)
    return Pairs(source, images, tuple(row["caption"] for row in kept),
                 {name: tuple(row.get(name) for row in kept) for name in names}, tuple(keep_labels), tuple(skipped))


def _resolve(name: str, root: Path) -> Path:
    path = Path(name)
    return path if path.is_absolute() else root / path


def _row_problem(row: dict, root: Path) -> str | None:
    image, caption = row.get("image"), row.get("caption")
    if not isinstance(image, str) or not image.strip():
        return f"expected an image path, got {image!r}"
    if not isinstance(caption, str) or not caption.strip():
        return f"expected a caption, got {caption!r}"
    file = _resolve(image, root)
    if not file.is_file():
        return f"image {image!r} not found (looked for {str(file)!r})"
    return None


def _check_columns(names, where: str) -> None:
    missing = [c for c in _RESERVED if c not in names]
    if missing:
        raise ValueError(f"{where}: expected columns 'image' and 'caption', got {list(names)} (missing {missing})")
    for extra in names:
        if extra not in _RESERVED:
            check_field_name(f"{where}: an extra column (it becomes a payload field)", extra)


def _table_rows(source: Path, text: str):
    delimiter = "\t" if source.suffix.lower() == ".tsv" else ","
    # quoted fields may hold newlines; strict: an unclosed quote is an error, not the rest of the file as one field
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header = next(reader, None)
    if not header:
        raise ValueError(f"{source}: empty file; expected a header line with 'image' and 'caption' columns")
    header = [h.strip() for h in header]
    _check_columns(header, str(source))
    if len(set(header)) != len(header):
        raise ValueError(f"{source}: the header repeats a column name: {header}")
    rows, labels, problems = [], [], []
    while True:
        line = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ValueError(f"{source.name} line {line}: not valid {'TSV' if delimiter == chr(9) else 'CSV'} "
                             f"({exc})") from None
        if not values:
            continue
        label = f"{source.name} line {line}"
        if len(values) != len(header):
            problems.append(f"{label}: expected {len(header)} fields like the header, got {len(values)}")
            continue
        rows.append(dict(zip(header, values)))
        labels.append(label)
    return rows, labels, problems


def _jsonl_rows(source: Path, text: str):
    rows, labels, problems, names = [], [], [], None
    for line, content in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may sit in a string
        if not content.strip():
            continue
        label = f"{source.name} line {line}"
        try:
            row = json.loads(content)
        except json.JSONDecodeError as exc:
            problems.append(f"{label}: not a JSON object ({exc})")
            continue
        if not isinstance(row, dict):
            problems.append(f"{label}: expected a JSON object, got {type(row).__name__}")
            continue
        if names is None:
            names = list(row)
            _check_columns(names, label)
        elif set(row) != set(names):
            problems.append(f"{label}: expected the keys of the first row {sorted(names)}, got {sorted(row)}")
            continue
        rows.append(row)
        labels.append(label)
    return rows, labels, problems


def _folder_rows(folder: Path):
    images, problems = {}, []
    for path in image_files(folder):
        if path.stem in images:
            problems.append(f"{folder.name}/{path.name}: another image has the same name "
                            f"({images[path.stem].name}); which one {path.stem}.txt describes is ambiguous")
            continue
        images[path.stem] = path
    rows, labels = [], []
    for stem, path in images.items():
        caption_file = path.with_suffix(".txt")
        if not caption_file.is_file():
            problems.append(f"{folder.name}/{path.name}: no caption file {caption_file.name} beside it")
            continue
        try:
            lines = [line.strip() for line in caption_file.read_text(encoding="utf-8-sig").splitlines()]
        except UnicodeDecodeError as exc:
            problems.append(f"{folder.name}/{caption_file.name}: expected UTF-8 text ({exc})")
            continue
        captions = [line for line in lines if line] or [""]
        for n, caption in enumerate(captions, start=1):
            rows.append({"image": path.name, "caption": caption})
            labels.append(f"{folder.name}/{caption_file.name} caption {n}")
    stems = set(images)
    for orphan in sorted(folder.glob("*.txt"), key=lambda p: natural_key(p.name)):
        if orphan.stem not in stems:
            problems.append(f"{folder.name}/{orphan.name}: no image named {orphan.stem}.* beside it")
    return rows, labels, problems
