"""The torchrun worker entry: `python -m unetkit.training.worker CONFIG.json` runs `fit` on one rank.

`unetkit.training.distributed.launch` starts one of these per process (`torchrun ... -m
unetkit.training.worker CONFIG.json`); multi-node commands are in docs/distributed.md. A user
error ends the worker with exit code 2 and one line naming its rank.
"""

from __future__ import annotations

import os
import sys

from unetkit.config import TrainConfig, load_json
from unetkit.errors import UnetkitError
from unetkit.training.fit import fit


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: torchrun ... -m unetkit.training.worker CONFIG.json", file=sys.stderr)
        return 2
    try:
        fit(load_json(TrainConfig, args[0]))
    except UnetkitError as e:
        print(f"error (rank {os.environ.get('RANK', '0')}): {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
