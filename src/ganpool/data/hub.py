"""Optional: fetch CelebA from a Hugging Face dataset repository, push an exported model.

Both need `pip install 'ganpool[hub]'`. Downloads resume (huggingface_hub keeps partial files)
and are checked against a SHA-256 when one is given; nothing here runs in the tests' training
paths, and nothing runs unless asked for.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ganpool.errors import GanpoolError


def _hub():
    try:
        import huggingface_hub
    except ModuleNotFoundError:
        raise GanpoolError("this needs the hub extra: pip install 'ganpool[hub]'") from None
    return huggingface_hub


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, expected: str | None) -> Path:
    if expected and sha256_of(path) != expected.lower():
        raise GanpoolError(
            f"{path} does not match the expected SHA-256 {expected[:12]}…: delete it and download "
            "again, or check the --sha256 you were given"
        )
    return path


def download_dataset(
    repo_id: str, filename: str, out: Path, sha256: str | None = None, revision: str | None = None
) -> Path:
    """One file (e.g. img_align_celeba.zip) of a dataset repository, resumable and checked."""
    hub = _hub()
    try:
        path = hub.hf_hub_download(
            repo_id, filename, repo_type="dataset", revision=revision, local_dir=out
        )
    except Exception as e:  # offline, unknown repository or file, refused token ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GanpoolError(f"cannot download {filename} from {repo_id}: {first}") from None
    return verify(Path(path), sha256)


def push_model(folder: Path, repo_id: str) -> str:
    """Upload an exported model folder to a model repository (token from `hf auth login`)."""
    hub = _hub()
    try:
        hub.create_repo(repo_id, repo_type="model", exist_ok=True)
        info = hub.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GanpoolError(f"cannot push to {repo_id}: {first}") from None
    return str(getattr(info, "commit_url", repo_id))
