"""What ``relprop evaluate`` reads: the images (a flat folder or an ImageFolder tree), their
object boxes (Pascal VOC XML as ImageNet's validation boxes come, or one CSV/JSON file) and
segmentation masks (PNG), each brought onto the pixels the model sees."""
from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..images import IMAGE_SUFFIXES



def pixel_range(preprocess, size: int) -> tuple[list[float], list[float]]:
    """The model's black and white: what its preprocessing makes of an all-black and an all-white
    picture, per channel (the range a perturbation draws from)."""
    black, white = (preprocess(Image.new("RGB", (size, size), colour)) for colour in
                    ((0, 0, 0), (255, 255, 255)))
    centre = size // 2
    return black[:, centre, centre].tolist(), white[:, centre, centre].tolist()


@dataclass(frozen=True)
class Item:
    index: int  # place in the data set: seeds and output order follow it
    path: str
    name: str  # the stem that boxes and masks are matched by
    label: int | None  # the class from the folder name; None: explain the predicted class


class DataError(ValueError):
    """A data folder, box or mask file that cannot be used; the message says what to pass."""


def list_images(root: str | Path, class_names: list[str]) -> list[Item]:
    """The images under ``root``: a flat folder (predicted classes), or an ImageFolder tree whose
    sub-folders name the classes (an exact class name, a class index, or, when there are as many
    folders as classes, torchvision's ImageFolder order: ImageNet's sorted WordNet ids)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data {root}: {'not a folder' if root.exists() else 'no such folder'}; "
                        "pass a folder of images, or an ImageFolder tree (one sub-folder per class)")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    loose = _images_in(root)
    if folders and not loose:
        labels = _folder_labels(folders, class_names)
        found = [(path, labels[f.name]) for f in folders for path in _images_in(f)]
    else:
        found = [(path, None) for path in loose]
    if not found:
        raise DataError(f"--data {root}: no images found (looked for "
                        f"{', '.join(sorted(IMAGE_SUFFIXES))} files)")
    return [Item(i, str(path), path.stem, label) for i, (path, label) in enumerate(found)]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _folder_labels(folders: list[Path], class_names: list[str]) -> dict[str, int]:
    by_name = {}
    for position, folder in enumerate(folders):
        name = folder.name
        if name in class_names:
            by_name[name] = class_names.index(name)
        elif name.isdigit() and int(name) < len(class_names):
            by_name[name] = int(name)
        elif len(folders) == len(class_names):
            by_name[name] = position
        else:
            raise DataError(
                f"--data: cannot tell the class of sub-folder '{name}': name the folders by class "
                f"name (e.g. '{class_names[0]}') or index (0..{len(class_names) - 1}), give all "
                f"{len(class_names)} class folders (ImageFolder order), or put the images in one "
                "flat folder to explain the predicted classes")
    return by_name


Box = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax in the image's own pixels


def read_boxes(source: str | Path) -> dict[str, list[Box]]:
    """Image stem -> object boxes, from a folder of Pascal VOC XML files (``STEM.xml``), a CSV
    file with columns ``image,xmin,ymin,xmax,ymax`` (one row per box) or a JSON file
    ``{"STEM": [[xmin, ymin, xmax, ymax], ...]}``."""
    source = Path(source)
    try:
        if source.is_dir():
            return {p.stem: _voc_boxes(p) for p in sorted(source.glob("*.xml"))}
        if source.suffix.lower() == ".csv":
            boxes: dict[str, list[Box]] = {}
            with open(source, newline="") as f:
                for row in csv.DictReader(f):
                    boxes.setdefault(Path(row["image"]).stem, []).append(
                        tuple(float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")))
            return boxes
        if source.suffix.lower() == ".json":
            data = json.loads(source.read_text())
            return {Path(k).stem: [tuple(map(float, b)) for b in v] for k, v in data.items()}
    except (OSError, ValueError, KeyError, TypeError, ET.ParseError) as e:
        raise DataError(f"--boxes {source}: cannot read the boxes ({type(e).__name__}: {e}); "
                        "pass a folder of Pascal VOC XML files, a CSV with columns "
                        "image,xmin,ymin,xmax,ymax, or a JSON object of image -> boxes") from None
    raise DataError(f"--boxes {source}: {'no such file or folder' if not source.exists() else 'not a folder, .csv or .json'}; "
                    "pass a folder of Pascal VOC XML files, a .csv or a .json file")


def _voc_boxes(path: Path) -> list[Box]:
    root = ET.parse(path).getroot()
    return [tuple(float(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax"))
            for obj in root.iter("object")]


def box_mask(size: tuple[int, int], boxes: list[Box]) -> Image.Image:
    """An 'L' image of ``size`` (width, height), 255 inside any box. VOC coordinates are 1-based
    and inclusive; a box covers the pixels from xmin-1 to xmax-1."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for xmin, ymin, xmax, ymax in boxes:
        draw.rectangle((xmin - 1, ymin - 1, xmax - 1, ymax - 1), fill=255)
    return mask


def read_mask(folder: str | Path, stem: str) -> Image.Image | None:
    """The segmentation mask ``STEM.png`` in ``folder`` as an 'L' image (non-zero: the object),
    or None where there is none."""
    path = Path(folder) / f"{stem}.png"
    if not path.is_file():
        return None
    with Image.open(path) as img:
        values = np.asarray(img.convert("L")) > 0
    return Image.fromarray((values * 255).astype(np.uint8))
