"""Loading a dataset into the database (the instructor's `ganpool data load`).

Workers read it back through `WorkerStore.dataset_images`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ganpool.store.connection import Store


@dataclass(frozen=True)
class LoadedDataset:
    fingerprint: str
    images: int
    bytes: int


class DatasetStore(Store):
    def load_images(
        self,
        fingerprint: str,
        kind: str,
        image_size: int,
        channels: int,
        encoded: Iterable[bytes],
        size: int,
    ) -> LoadedDataset:
        """Store `size` encoded images under `fingerprint`, in one transaction: a partial
        earlier load is replaced, so loading again is harmless. The images stream in by
        binary COPY."""
        with self.tx():
            self.execute(
                "begin_dataset",
                fingerprint=fingerprint,
                kind=kind,
                size=size,
                image_size=image_size,
                channels=channels,
            )
            self.execute("clear_dataset_images", fingerprint=fingerprint)
            rows = ((fingerprint, i, image) for i, image in enumerate(encoded))
            self.copy_in("copy_dataset_images", ["text", "int4", "bytea"], rows=rows)
            done = self.one("finish_dataset", fingerprint=fingerprint)
        return LoadedDataset(fingerprint, done["size"], done["bytes"])
