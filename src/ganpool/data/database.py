"""A dataset served from PostgreSQL: loaded once by the instructor, fetched per unit by workers.

`load_dataset` COPYs every image, encoded as it is on disk, in binary
(`DatasetStore.load_images`); `DatabaseImages` fetches the images of the units a worker
claims (`WorkerStore.dataset_images`: a few hundred KB per unit against ~25 MB of
gradients) and keeps the most recent ones in memory.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from ganpool.data.datasets import Dataset, check_images, decode
from ganpool.errors import DatasetMismatch
from ganpool.store import Store
from ganpool.store.datasets import DatasetStore
from ganpool.store.worker import WorkerStore

CACHE_IMAGES = 4096  # encoded images kept in memory (about 40 MB of CelebA JPEGs)


def load_dataset(store: Store, dataset: Dataset, image_size: int, channels: int) -> dict:
    """Store every image of `dataset` under its fingerprint; idempotent, restartable."""
    check_images(dataset)  # nothing is stored if one image would fail every worker
    done = DatasetStore.of(store).load_images(
        dataset.fingerprint,
        dataset.kind,
        image_size,
        channels,
        (dataset.encoded(i) for i in range(len(dataset))),
        size=len(dataset),
    )
    return {"fingerprint": done.fingerprint, "images": done.images, "bytes": done.bytes}


class DatabaseImages:
    kind = "database"

    def __init__(self, dsn: str, fingerprint: str, size: int, image_size: int, channels: int):
        self.dsn, self.fingerprint = dsn, fingerprint
        self.image_size, self.channels = image_size, channels
        self._store: WorkerStore | None = None
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        if self._db().loaded_dataset_size(fingerprint) != size:
            self.close()
            raise DatasetMismatch(
                f"the run's images ({fingerprint}) are not loaded in this database: "
                "the instructor runs `ganpool data load` first"
            )
        self.size = size

    def _db(self) -> WorkerStore:
        if self._store is None or self._store.closed:
            self._store = WorkerStore.open(self.dsn)
        return self._store

    def __len__(self) -> int:
        return self.size

    def batch(self, indices: list[int]) -> torch.Tensor:
        missing = sorted({i for i in indices if i not in self._cache})
        if missing:
            self._cache.update(self._db().dataset_images(self.fingerprint, missing))
            while len(self._cache) > CACHE_IMAGES:
                self._cache.popitem(last=False)
        for i in indices:
            self._cache.move_to_end(i)
        return torch.stack(
            [decode(self._cache[i], self.image_size, self.channels) for i in indices]
        )

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
