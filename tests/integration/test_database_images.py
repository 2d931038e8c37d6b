"""A run whose images live in the database: workers need nothing but a connection."""

import numpy as np
import pytest
import torch
from PIL import Image

from ganpool.data.database import DatabaseImages, load_dataset
from ganpool.data.datasets import ImageFolder, builtin_faces
from ganpool.errors import DatasetMismatch
from ganpool.runs import create_run
from ganpool.settings import load_run_config
from ganpool.store import Store, connect
from ganpool.training.local import train_local
from tests.helpers import train_distributed


def _celeba(tmp_path, n=12):
    rng = np.random.default_rng(1)
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    for i in range(n):
        arr = rng.integers(0, 255, size=(218, 178, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i + 1:06d}.jpg", quality=90)
    return tmp_path


def test_a_worker_without_local_data_trains_exactly_like_one_reading_disk(db, tmp_path):
    disk = ImageFolder(_celeba(tmp_path), 64, 3)
    cfg = load_run_config(
        preset="dcgan64",
        overrides={
            "ngf": 8,
            "ndf": 8,
            "unit_size": 3,
            "results_per_step": 2,
            "max_steps": 2,
            "data_source": "database",
            "sample_every": 1000,
        },
    )
    store = Store(connect(db))
    loaded = load_dataset(store, disk, 64, 3)
    assert loaded["images"] == 12 and loaded["bytes"] == sum(
        (disk.root / f).stat().st_size for f in disk.files
    )
    assert load_dataset(store, disk, 64, 3)["images"] == 12  # loading again is harmless
    run = create_run(store, "from-db", cfg, disk)
    store.close()

    served = DatabaseImages(db, run.fingerprint, run.dataset_size, 64, 3)
    assert torch.equal(served.batch([0, 5, 11, 5]), disk.batch([0, 5, 11, 5]))
    served.close()

    coordinator, workers = train_distributed(db, run, workers=2)  # no data path given
    assert coordinator.version == 2 * cfg.versions_per_step
    assert all(isinstance(w.dataset, DatabaseImages) for w in workers)
    reference = train_local(cfg, disk, 2).weights()
    for name, want in coordinator.state.weights().items():
        torch.testing.assert_close(want, reference[name], rtol=1e-5, atol=1e-6)


def test_a_run_whose_images_were_never_loaded_is_refused(db):
    faces = builtin_faces()
    cfg = load_run_config(overrides={"data_source": "database"})
    store = Store(connect(db))
    run = create_run(store, "nothing-loaded", cfg, faces)
    store.close()
    with pytest.raises(DatasetMismatch, match="ganpool data load"):
        DatabaseImages(db, run.fingerprint, run.dataset_size, 32, 1)


def test_builtin_faces_round_trip_through_the_database(db):
    faces = builtin_faces()
    store = Store(connect(db))
    load_dataset(store, faces, 32, 1)
    store.close()
    served = DatabaseImages(db, faces.fingerprint, 100, 32, 1)
    assert torch.equal(served.batch(list(range(100))), faces.images)
    served.close()
