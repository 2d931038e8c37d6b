"""`ganpool data ...`: a run's images into the database, a dataset from the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

from ganpool.cli.args import open_store, run_config
from ganpool.cli.parser import command, config_args, db_arg, group


def cmd_data_load(args) -> int:
    from ganpool.data.database import load_dataset
    from ganpool.data.datasets import open_dataset

    cfg = run_config(args)
    dataset = open_dataset(cfg.dataset, cfg.image_size, cfg.channels, args.data)
    _, store = open_store(args)
    done = load_dataset(store, dataset, cfg.image_size, cfg.channels)
    print(
        f"loaded {done['images']} images ({done['bytes'] / 2**20:.1f} MB) as "
        f'{done["fingerprint"]}; create the run with --set data_source="database"'
    )
    return 0


def cmd_data_download(args) -> int:
    from ganpool.data.hub import download_dataset

    path = download_dataset(args.repo, args.file, Path(args.out), args.sha256, args.revision)
    print(f"downloaded {path}" + (" (SHA-256 checked)" if args.sha256 else ""))
    return 0


def register(sub) -> None:
    data = group(sub, "data", "datasets in the database")
    dl = command(data, "load", "store the run's images in the database, once", cmd_data_load)
    db_arg(dl)
    config_args(dl)
    dd = command(data, "download", "fetch a dataset file from the Hugging Face Hub",
                 cmd_data_download)  # fmt: skip
    dd.add_argument("--repo", required=True, help="dataset repository, e.g. someone/celeba")
    dd.add_argument("--file", default="img_align_celeba.zip", help="file in the repository")
    dd.add_argument("--sha256", help="expected checksum of the file")
    dd.add_argument("--revision", help="a commit or tag, for a reproducible class")
    dd.add_argument("--out", default="data", help="folder to download into")
