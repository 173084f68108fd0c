"""`basinlab data download`: fetch the datasets basinlab can download, without torchvision."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from basinlab.cli.options import ArgumentParser


def add_commands(sub) -> None:
    data = sub.add_parser("data", help="get datasets: `basinlab data download cifar10`")
    actions = data.add_subparsers(dest="data_command", metavar="{download}", required=True,
                                  parser_class=ArgumentParser)
    download = actions.add_parser(
        "download", help="fetch datasets (the canonical archives, checksums verified, resumable) into "
                         "<datasets-dir>/<name>/",
        description="Fetch datasets from their canonical archives over HTTPS, verify the published MD5 "
                    "checksums and unpack them into <datasets-dir>/<name>/, the layout `basinlab train` reads. "
                    "An interrupted transfer resumes when the command is rerun; a failure leaves no "
                    "half-written dataset.")
    download.add_argument("names", nargs="+", metavar="NAME",
                          help="mnist, fashion-mnist, cifar10 or cifar100 (several may be given)")
    download.add_argument("--datasets-dir", metavar="DIR",
                          help="where the datasets go (default: $BASINLAB_DATASETS or ~/.cache/basinlab/datasets)")
    download.set_defaults(func=cmd_download)


def cmd_download(args) -> int:
    from basinlab.data import default_datasets_dir
    from basinlab.data.download import fetch_dataset, source_of
    names = list(dict.fromkeys(args.names))   # a name given twice is fetched once
    for name in names:   # every name is checked before anything is fetched
        source_of(name)
    root = Path(args.datasets_dir).expanduser() if args.datasets_dir else default_datasets_dir()
    for name in names:
        try:
            place, fetched = fetch_dataset(name, root)
        except KeyboardInterrupt:   # the partial file is kept; no dataset folder was half-written
            print(f"basinlab: data download {name}: interrupted; rerun the same command to resume",
                  file=sys.stderr)
            return 130
        state = "downloaded to" if fetched else "already present in"
        print(f"{name}: {state} {place.describe()}", flush=True)
    print(f"train with: basinlab train --dataset {names[0]} --datasets-dir {shlex.quote(str(root))}")
    return 0
