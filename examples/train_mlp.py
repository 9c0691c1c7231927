"""Train a small MLP with adadelta_fused, in fp32 or bf16 with the mixed-precision options.

    python examples/train_mlp.py                      # fp32, flat buffers, fused zero_grad
    python examples/train_mlp.py --bf16               # bf16 params, fp32 state, fp32 master weights
    python examples/train_mlp.py --bf16 --stochastic  # bf16 params and state, stochastic rounding
"""

from __future__ import annotations

import argparse

import torch

import adadelta_fused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bf16", action="store_true", help="bf16 parameters")
    parser.add_argument("--stochastic", action="store_true", help="bf16 state and stochastic rounding")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 256), torch.nn.GELU(), torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 1)
    ).to(dtype)
    if args.bf16 and args.stochastic:
        options = dict(stochastic_rounding=True, seed=1)
    elif args.bf16:
        options = dict(state_dtype=torch.float32, master_weights=True)
    else:
        options = {}
    optimizer = adadelta_fused.Adadelta(model.parameters(), lr=1.0, flatten=True, zero_grad_in_step=True, **options)

    inputs = torch.randn(4096, 32)
    targets = (inputs[:, :4].sum(1, keepdim=True).sin() + 0.1 * inputs[:, 4:5]).to(dtype)
    inputs = inputs.to(dtype)
    for step in range(args.steps + 1):
        batch = torch.randint(0, len(inputs), (256,))
        loss = torch.nn.functional.mse_loss(model(inputs[batch]), targets[batch])
        loss.backward()
        optimizer.step()  # also zeroes the gradients, in the same pass over memory
        if step % 50 == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    print("backends:", adadelta_fused.available_backends())


if __name__ == "__main__":
    main()
