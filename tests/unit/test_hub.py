"""The hub helpers, offline: checksums are enforced and a failed download is one line."""

import hashlib

import pytest

from ganpool.data.hub import download_dataset, sha256_of, verify
from ganpool.errors import GanpoolError


def test_checksums_are_checked(tmp_path):
    f = tmp_path / "img_align_celeba.zip"
    f.write_bytes(b"celeba" * 1000)
    good = hashlib.sha256(f.read_bytes()).hexdigest()
    assert sha256_of(f) == good
    assert verify(f, good.upper()) == f
    assert verify(f, None) == f
    with pytest.raises(GanpoolError, match="does not match the expected SHA-256"):
        verify(f, "0" * 64)


def test_an_unreachable_hub_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # this machine cannot reach the hub anyway
    with pytest.raises(GanpoolError) as e:
        download_dataset("nobody/celeba", "img_align_celeba.zip", tmp_path)
    assert str(e.value).startswith("cannot download img_align_celeba.zip from nobody/celeba:")
    assert "\n" not in str(e.value)
