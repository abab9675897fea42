"""`python -m edge_guard.training train|vaccinate ...`: the training commands data-parallel, for torchrun.

    torchrun --nproc_per_node 2 -m edge_guard.training train --data data/gtsrb --threads 1 --out runs/base

The same as `edgeguard train --distributed ...` started by torchrun (see edge_guard.training.distributed).
"""

from __future__ import annotations

import os
import sys

COMMANDS = ("train", "vaccinate")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        got = sys.argv[1] if len(sys.argv) > 1 else "nothing"
        print(f"error: expected a command from {', '.join(COMMANDS)}, got {got!r}; e.g. torchrun --nproc_per_node 2 "
              "-m edge_guard.training train --data data/gtsrb --out runs/base", file=sys.stderr)
        sys.exit(2)
    os.environ["EDGEGUARD_DISTRIBUTED"] = "1"  # --distributed, for train and vaccinate
    from edge_guard.cli import app

    app(prog_name="python -m edge_guard.training")


if __name__ == "__main__":
    main()
