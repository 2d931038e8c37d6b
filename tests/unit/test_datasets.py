import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from ganpool.data.datasets import ImageFolder, ZipImages, builtin_faces, open_dataset, to_tensor
from ganpool.errors import GanpoolError


def _celeba(tmp_path, n=5):
    """A small folder and zip with CelebA's layout: img_align_celeba/000001.jpg, 178x218."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    for i in range(n):
        arr = rng.integers(0, 255, size=(218, 178, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i + 1:06d}.jpg", quality=95)
    archive = tmp_path / "img_align_celeba.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(folder.iterdir(), reverse=True):  # stored out of order on purpose
            z.write(p, f"img_align_celeba/{p.name}")
    return folder.parent, archive


def test_folder_and_zip_are_the_same_dataset(tmp_path):
    folder, archive = _celeba(tmp_path)
    a, b = ImageFolder(folder, 64, 3), open_dataset("folder", 64, 3, archive)
    assert isinstance(b, ZipImages)
    assert len(a) == len(b) == 5 and a.fingerprint == b.fingerprint
    x = a.batch([0, 4])
    assert x.shape == (2, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x, b.batch([0, 4]))


def test_resize_and_centre_crop():
    img = Image.new("RGB", (178, 218), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, 178, 10))  # a black band at the top is cropped away
    t = to_tensor(img, 64, 3)
    assert t.shape == (3, 64, 64) and torch.all(t == 1.0)


def test_builtin_faces_are_offline_and_fixed():
    faces = builtin_faces()
    assert len(faces) == 100 and faces.images.shape == (100, 1, 32, 32)
    assert faces.fingerprint == builtin_faces().fingerprint


def test_bad_zip_and_empty_folder_are_one_line(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"nope")
    with pytest.raises(GanpoolError, match="cannot read"):
        open_dataset("folder", 64, 3, tmp_path / "x.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GanpoolError, match="holds no images"):
        ImageFolder(tmp_path / "empty", 64, 3)
