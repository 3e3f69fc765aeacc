"""``python -m dream_pl.data.prepare imagenet --data-dir data --nclass 100 --size 64``: convert once.

The format and the conversion are :mod:`dream_pl.data.prepared`; finding the raw files is
:func:`dream_pl.data.sources.prepare_dataset`. This module is only the command, so the two stay free of
each other's imports.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from dream_pl.data.sources import prepare_dataset


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: prepare a dataset (any known one; the ImageNet folders are where it pays)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="dataset name, e.g. imagenet, imagenet_subset, tiny_imagenet, cifar100")
    parser.add_argument("--data-dir", required=True, help="where the raw files are; prepared/ goes here")
    parser.add_argument("--size", type=int, default=None, help="side in pixels (ImageNet sets)")
    parser.add_argument("--nclass", type=int, default=None, help="imagenet: the first N classes (sorted)")
    args = parser.parse_args(argv)
    options = {k: v for k, v in (("size", args.size), ("nclass", args.nclass)) if v is not None}
    try:
        folder = prepare_dataset(args.name, Path(args.data_dir), **options)
    except (FileNotFoundError, TypeError, ValueError, KeyError) as err:
        print(f"error: {err}")
        raise SystemExit(2) from None
    print(f"prepared: {folder}")


if __name__ == "__main__":
    main()
