"""A dataset served from PostgreSQL: loaded once by the instructor, fetched per unit by workers.

`load_dataset` COPYs every image, encoded as it is on disk, in binary; `DatabaseImages`
fetches the images of the units a worker claims (a few hundred KB per unit against ~25 MB
of gradients) and keeps the most recent ones in memory.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from ganpool.data.datasets import Dataset, check_images, decode
from ganpool.errors import DatasetMismatch
from ganpool.store import Store, connect
from ganpool.store.queries import named_queries

CACHE_IMAGES = 4096  # encoded images kept in memory (about 40 MB of CelebA JPEGs)


def load_dataset(store: Store, dataset: Dataset, image_size: int, channels: int) -> dict:
    """Store every image of `dataset` under its fingerprint; idempotent, restartable."""
    fp = dataset.fingerprint
    check_images(dataset)  # nothing is stored if one image would fail every worker
    with store.tx():
        store.execute(
            "begin_dataset",
            fingerprint=fp,
            kind=dataset.kind,
            size=len(dataset),
            image_size=image_size,
            channels=channels,
        )
        store.execute("clear_dataset_images", fingerprint=fp)
        with store.conn.cursor() as cur, cur.copy(named_queries()["copy_dataset_images"]) as copy:
            copy.set_types(["text", "int4", "bytea"])
            for i in range(len(dataset)):
                copy.write_row((fp, i, dataset.encoded(i)))
        done = store.one("finish_dataset", fingerprint=fp)
    return {"fingerprint": fp, "images": done["size"], "bytes": done["bytes"]}


class DatabaseImages:
    kind = "database"

    def __init__(self, dsn: str, fingerprint: str, size: int, image_size: int, channels: int):
        self.dsn, self.fingerprint = dsn, fingerprint
        self.image_size, self.channels = image_size, channels
        self._store: Store | None = None
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        row = self._db().one("dataset_by_fingerprint", fingerprint=fingerprint)
        if row is None or row["size"] != size:
            self.close()
            raise DatasetMismatch(
                f"the run's images ({fingerprint}) are not loaded in this database: "
                "the instructor runs `ganpool data load` first"
            )
        self.size = size

    def _db(self) -> Store:
        if self._store is None or self._store.conn.closed:
            self._store = Store(connect(self.dsn))
        return self._store

    def __len__(self) -> int:
        return self.size

    def batch(self, indices: list[int]) -> torch.Tensor:
        missing = sorted({i for i in indices if i not in self._cache})
        if missing:
            with self._db().conn.cursor(binary=True) as cur:
                cur.execute(
                    named_queries()["dataset_images"],
                    {"fingerprint": self.fingerprint, "indices": missing},
                )
                for row in cur.fetchall():
                    self._cache[row["idx"]] = bytes(row["image"])
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
