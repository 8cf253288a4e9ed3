"""A 2-process stage whose worker still runs native code when its main returns (see test_distributed).

Each process joins a gloo group and ends its collective part with salsa.distributed.release_workers; the
main process then writes DIR/done. In the worker, a daemon thread stays inside torch (GIL released) past
the end of main, and an object slow to tear down keeps the interpreter finalising long enough for that
thread to come back into Python: the race by which, in CI, a DeepSpeed worker whose job was done aborted
("terminate called without an active exception"), widened here until it happens every time.

  python -m torch.distributed.run --nproc_per_node 2 exit_probe.py DIR
"""

import sys
import threading
import time
from pathlib import Path

import torch

from salsa import artifacts, distributed


class SlowTeardown:
    def __del__(self, sleep=time.sleep):  # time may be gone from the module when this runs
        sleep(3)


def busy_in_torch() -> None:
    a = torch.randn(400, 400)
    while True:
        a = torch.mm(a, a).clamp_(-1, 1)


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    torch.distributed.init_process_group("gloo")
    rank, total = distributed.rank(), distributed.all_sum(torch.ones(1))
    if rank == 1:
        threading.Thread(target=busy_in_torch, daemon=True).start()
        sys.modules[__name__].teardown = SlowTeardown()
    if distributed.release_workers():
        (out / "done").write_text(f"{total.item():g}\n")
    print(f"exit_probe: rank {rank} returns")


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main, sys.argv[1:]))
