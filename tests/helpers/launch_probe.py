"""What salsa.launch started, seen from inside: each process records its environment, and with --train the
processes run a tiny data-parallel regression (gloo all-reduce) and rank 0 writes the weights.

  python -m launch_probe --record DIR [--sleep S] [--train]
"""

import argparse
import json
import os
import time
from pathlib import Path

ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE",
            "GROUP_RANK", "SALSA_STAGE_ERROR_FILE", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT")


def train(world: int, rank: int) -> list[float]:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    data = torch.randn(8 * world, 4, generator=torch.Generator().manual_seed(1))
    target = data @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(5):
        shard = slice((step % 2) * 4 * world + rank * 4, (step % 2) * 4 * world + rank * 4 + 4)
        loss = torch.nn.functional.mse_loss(model(data[shard]), target[shard])
        optimizer.zero_grad()
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
        optimizer.step()
    weights = [float(x) for p in model.parameters() for x in p.detach().flatten()]
    dist.destroy_process_group()
    return weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--train", action="store_true")
    args = parser.parse_args()
    record = {key: os.environ.get(key) for key in ENV_KEYS}
    record["start"] = time.time()
    time.sleep(args.sleep)
    if args.train:
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        weights = train(world, rank)
        if rank == 0:
            (Path(args.record) / "weights.json").write_text(json.dumps(weights))
    record["end"] = time.time()
    name = f"{os.getpid()}.json"
    (Path(args.record) / name).write_text(json.dumps(record))


if __name__ == "__main__":
    main()
