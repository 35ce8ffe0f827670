"""Data-parallel training with a tuning-free step size: DDP plus rlopt.SLS, launched with torchrun.

    torchrun --nproc_per_node=2 examples/ddp_sls.py            # 2 processes on this machine (gloo on CPU)
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 examples/ddp_sls.py

Each rank fits its own shard of scikit-learn's bundled digits with a small MLP. DDP averages the gradients in
``backward``; SLS averages the losses it decides from over the ranks (``process_group``, the world group once
torch.distributed is initialized), so every rank takes the same step, the one a single process would take on
the union of the ranks' minibatches. Rank 0 prints the progress and saves the model.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits

import rlopt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--out", default="ddp_sls_model.pt")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if not cuda:
        torch.set_num_threads(1)

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    shard = torch.arange(rank, len(x), world)  # each rank its own rows
    x, y = x[shard].to(device), y[shard].to(device)

    torch.manual_seed(0)  # the same initial weights on every rank
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 10)).to(device)
    net = torch.nn.parallel.DistributedDataParallel(model)
    opt = rlopt.SLS(model.parameters())  # no learning rate; process_group defaults to the world group

    order = torch.Generator().manual_seed(rank)
    steps = len(x) // args.batch_size  # equal on every rank up to one row: use the smallest
    steps_t = torch.tensor(steps, device=device)
    dist.all_reduce(steps_t, op=dist.ReduceOp.MIN)
    for epoch in range(args.epochs):
        perm = torch.randperm(len(x), generator=order).to(device)
        for i in range(int(steps_t)):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            opt.step(lambda idx=idx: F.cross_entropy(net(x[idx]), y[idx]))
        if rank == 0:
            print(f"epoch {epoch}: loss {opt.stats['loss']:.4f}, step size {opt.stats['step_size']:.3g}", flush=True)
    with torch.no_grad():
        correct = torch.tensor([(model(x).argmax(1) == y).sum().item(), len(y)], device=device)
    dist.all_reduce(correct)
    if rank == 0:
        print(f"training accuracy over all ranks: {correct[0].item() / correct[1].item():.3f}")
        torch.save(model.state_dict(), args.out)
    dist.barrier()  # every rank done before any tears the process group down
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
