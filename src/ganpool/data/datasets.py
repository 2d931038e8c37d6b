"""Datasets a run can train on, each with a fingerprint that every worker checks.

Images come out as float32 tensors in [-1, 1], shape (C, S, S). A dataset is indexed by
position; the run's work units name positions, so every worker must hold the same images
in the same order: the fingerprint (a hash of the order-defining content) guarantees it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganpool.errors import DatasetMismatch, GanpoolError
from ganpool.extras import require

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def to_tensor(img: Image.Image, size: int, channels: int) -> torch.Tensor:
    """Resize the short side to `size`, centre-crop to size x size, scale to [-1, 1]."""
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.uint8).reshape(size, size, channels)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def decode(encoded: bytes, size: int, channels: int) -> torch.Tensor:
    """An encoded image file's bytes (JPEG, PNG ...) -> C x size x size in [-1, 1]."""
    import io

    with Image.open(io.BytesIO(encoded)) as img:
        return to_tensor(img, size, channels)


class InMemoryImages:
    """A dataset small enough to hold decoded: the built-in faces."""

    kind = "faces"

    def __init__(self, images: torch.Tensor, fingerprint: str, originals: np.ndarray):
        self.images = images  # N x C x S x S in [-1, 1]
        self.fingerprint = fingerprint
        self.originals = originals  # N x H x W uint8, as shipped

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, indices: list[int]) -> torch.Tensor:
        return self.images[torch.as_tensor(indices, dtype=torch.long)]

    def encoded(self, i: int) -> bytes:
        """Image i as a PNG of the original pixels (what `ganpool data load` stores)."""
        import io

        buf = io.BytesIO()
        Image.fromarray(self.originals[i]).save(buf, format="PNG")
        return buf.getvalue()


def builtin_faces(size: int = 32, channels: int = 1) -> InMemoryImages:
    """The 100 real LFW faces scikit-image ships (the first 100 of `lfw_subset`), no download."""
    skimage_data = require("skimage.data", "faces", "the built-in faces dataset")
    # 100 x 25 x 25 grayscale
    faces = (skimage_data.lfw_subset()[:100] * 255.0).round().astype(np.uint8)
    tensors = [to_tensor(Image.fromarray(face), size, channels) for face in faces]
    images = torch.stack(tensors)
    digest = hashlib.sha256(b"faces-v1|%d|%d|" % (size, channels))
    digest.update(faces.tobytes())
    return InMemoryImages(images, "faces-" + digest.hexdigest()[:16], faces)


def folder_fingerprint(names_and_sizes: list[tuple[str, int]], size: int, channels: int) -> str:
    """Image paths (relative, sorted) and file sizes: cheap on 200k files, and the same for a
    folder and the zip holding it."""
    digest = hashlib.sha256(b"folder-v1|%d|%d|" % (size, channels))
    for name, nbytes in names_and_sizes:
        digest.update(name.encode() + b"|%d\n" % nbytes)
    return "folder-" + digest.hexdigest()[:16]


class _EncodedFiles:
    """Images decoded on demand from their encoded bytes (`encoded(i)`, in subclasses)."""

    kind = "folder"
    files: list[str]
    size: int
    channels: int

    def __len__(self) -> int:
        return len(self.files)

    def encoded(self, i: int) -> bytes:
        raise NotImplementedError

    def batch(self, indices: list[int]) -> torch.Tensor:
        return torch.stack([decode(self.encoded(i), self.size, self.channels) for i in indices])


class ImageFolder(_EncodedFiles):
    """Every image file under `root` in sorted relative-path order, decoded on demand.

    Reads the CelebA `img_align_celeba/` layout (or the folder that contains it) as well as
    any flat or nested folder of images.
    """

    def __init__(self, root: Path, size: int, channels: int):
        root = Path(root)
        if (root / "img_align_celeba").is_dir():
            root = root / "img_align_celeba"
        if not root.is_dir():
            raise GanpoolError(f"dataset folder {root} does not exist; pass --data PATH")
        self.root, self.size, self.channels = root, size, channels
        self.files = sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self.files:
            raise GanpoolError(
                f"dataset folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        self.fingerprint = folder_fingerprint(
            [(name, (root / name).stat().st_size) for name in self.files], size, channels
        )

    def encoded(self, i: int) -> bytes:
        return (self.root / self.files[i]).read_bytes()


class ZipImages(_EncodedFiles):
    """The images inside a zip (CelebA's `img_align_celeba.zip`), read without extracting.

    Ordered and fingerprinted by their path inside the archive, with any leading
    `img_align_celeba/` removed, so the zip and the extracted folder are the same dataset.
    """

    def __init__(self, path: Path, size: int, channels: int):
        import zipfile

        self.path, self.size, self.channels = Path(path), size, channels
        try:
            self.archive = zipfile.ZipFile(self.path)
        except (FileNotFoundError, zipfile.BadZipFile) as e:
            raise GanpoolError(f"cannot read {path} as a zip of images: {e}") from None
        members = {}
        for info in self.archive.infolist():
            name = info.filename
            if info.is_dir() or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            key = name.split("img_align_celeba/", 1)[-1]
            members[key] = info
        if not members:
            raise GanpoolError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.files = sorted(members)
        self._members = [members[k] for k in self.files]
        self.fingerprint = folder_fingerprint(
            [(name, info.file_size) for name, info in zip(self.files, self._members, strict=True)],
            size,
            channels,
        )

    def encoded(self, i: int) -> bytes:
        return self.archive.read(self._members[i])


Dataset = InMemoryImages | ImageFolder | ZipImages


def check_images(dataset: Dataset) -> None:
    """Decode every image once, so that a file no worker could read is named now, in one
    line, rather than crashing every worker that draws it mid-run. (Decoding, not just
    reading the header: a truncated JPEG opens fine and fails on load.)"""
    import io

    if not isinstance(dataset, _EncodedFiles):
        return  # decoded already (the built-in faces)
    for i, name in enumerate(dataset.files):
        try:
            with Image.open(io.BytesIO(dataset.encoded(i))) as img:
                img.load()
        except Exception as e:
            where = getattr(dataset, "root", None) or getattr(dataset, "path", "")
            raise GanpoolError(
                f"image {i} of the dataset cannot be decoded: {name} in {where} "
                f"({type(e).__name__}: {e}); remove or replace it"
            ) from None


def open_dataset(kind: str, size: int, channels: int, path: Path | None = None) -> Dataset:
    if kind == "faces":
        return builtin_faces(size, channels)
    if kind == "folder":
        if path is None:
            raise GanpoolError("this run trains on an image folder: pass --data PATH")
        if Path(path).suffix.lower() == ".zip":
            return ZipImages(path, size, channels)
        return ImageFolder(path, size, channels)
    raise GanpoolError(f"unknown dataset kind {kind!r}")


def check_fingerprint(dataset: Dataset, expected: str, expected_size: int) -> None:
    if dataset.fingerprint != expected or len(dataset) != expected_size:
        raise DatasetMismatch(
            f"local dataset ({dataset.fingerprint}, {len(dataset)} images) does not match the "
            f"run's ({expected}, {expected_size} images): use the same files as the instructor"
        )
