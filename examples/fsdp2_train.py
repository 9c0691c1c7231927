"""Train a small transformer with FSDP2, bf16 params, fp32 master weights and DCP checkpoints.

    torchrun --nproc-per-node 2 examples/fsdp2_train.py                 # trains, saves a checkpoint
    torchrun --nproc-per-node 2 examples/fsdp2_train.py --resume        # loads it and trains on
    torchrun --nproc-per-node 1 examples/fsdp2_train.py --resume        # ... on another number of ranks

gloo on CPUs, nccl on GPUs (one per rank), the same command. The params are bf16 DTensors sharded by
``fully_shard``; ``adadelta_fused.Adadelta`` steps each rank's shards in one fused pass, keeping fp32 master
copies and fp32 accumulators (no GradScaler: bf16 has fp32's exponent range). The checkpoint holds the model
and optimizer state as sharded DCP files, so it loads at any world size.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

import adadelta_fused

VOCAB, WIDTH, HEADS, LAYERS, CONTEXT = 64, 64, 4, 2, 32


class Block(torch.nn.Module):
    """Pre-norm self-attention and MLP, each with a residual connection."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_norm = torch.nn.LayerNorm(WIDTH)
        self.qkv = torch.nn.Linear(WIDTH, 3 * WIDTH)
        self.out = torch.nn.Linear(WIDTH, WIDTH)
        self.mlp_norm = torch.nn.LayerNorm(WIDTH)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(WIDTH, 4 * WIDTH), torch.nn.GELU(), torch.nn.Linear(4 * WIDTH, WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(batch, length, 3, HEADS, WIDTH // HEADS).unbind(2)
        attended = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, WIDTH))
        return x + self.mlp(self.mlp_norm(x))


class TinyTransformer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(VOCAB, WIDTH)
        self.position = torch.nn.Parameter(torch.randn(CONTEXT, WIDTH) * 0.02)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = torch.nn.LayerNorm(WIDTH)
        self.head = torch.nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The next-token loss (returned instead of the logits, a view that FSDP2 warns about)."""
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        x = self.embedding(inputs) + self.position[: inputs.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def batch(step: int, rank: int, world: int, per_rank: int, device: torch.device) -> torch.Tensor:
    """Sequences that count up by a random stride (mod VOCAB): learnable from the first two tokens. Every
    rank draws the same global batch and takes its slice, so any world size sees the same data."""
    generator = torch.Generator().manual_seed(step)
    starts = torch.randint(0, VOCAB, (per_rank * world, 1), generator=generator)
    strides = torch.randint(1, 8, (per_rank * world, 1), generator=generator)
    tokens = (starts + strides * torch.arange(CONTEXT + 1)) % VOCAB
    return tokens[rank * per_rank: (rank + 1) * per_rank].to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="steps to train in this run")
    parser.add_argument("--batch", type=int, default=16, help="global batch (sequences), split across ranks")
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/fsdp2_train"))
    parser.add_argument("--resume", action="store_true", help="load --checkpoint first and train on from it")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    # device_id binds NCCL to this rank's GPU, so the barrier at the end knows which device it runs on.
    dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} does not split evenly over {world} ranks")

    torch.manual_seed(0)
    model = TinyTransformer().to(device=device, dtype=torch.bfloat16)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    optimizer = adadelta_fused.Adadelta(model.parameters(), lr=1.0, master_weights=True, state_dtype=torch.float32)

    first_step = 0
    if args.resume:
        state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer),
                 "step": torch.tensor(0)}
        dcp.load(state, checkpoint_id=str(args.checkpoint))
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
        first_step = int(state["step"])
        if rank == 0:
            print(f"resumed from {args.checkpoint} at step {first_step} on {world} ranks")

    per_rank = args.batch // world
    for step in range(first_step, first_step + args.steps):
        loss = model(batch(step, rank, world, per_rank, device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 0 or step == first_step + args.steps - 1:
            dist.all_reduce(loss.detach(), op=dist.ReduceOp.AVG)
            if rank == 0:
                print(f"step {step:4d}  loss {loss.item():.4f}")

    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer),
             "step": torch.tensor(first_step + args.steps)}
    dcp.save(state, checkpoint_id=str(args.checkpoint))
    if rank == 0:
        shard = next(iter(optimizer.state.values()))["master_param"]
        print(f"saved {args.checkpoint} at step {first_step + args.steps}; each rank holds {type(shard).__name__} "
              f"shards ({shard.dtype} master copies, placements {tuple(shard.placements)})")
    # Every rank past its last collective before any tears the process group down: without this barrier 4 of
    # 25 runs of tests/test_examples.py's 2-rank recipe aborted after saving ("terminate called without an
    # active exception"), with it 0 of 20.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
