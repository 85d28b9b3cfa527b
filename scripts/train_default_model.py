"""Train the bundled default model (DigitsViT) and save its weights.

Usage: .venv/bin/python scripts/train_default_model.py [--epochs 120]
Writes lava_spiked/bundled/data/digits_vit.pt and prints test accuracy.
Trains on the train split only; calibration and test splits stay unseen.
"""
import argparse

import torch
from tqdm import trange

from lava_spiked.bundled.digits_vit import WEIGHTS, DigitsViT, digits_splits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    splits = digits_splits()
    x, y = (torch.from_numpy(a) for a in splits["train"])
    model = DigitsViT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = args.epochs * ((len(y) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    for _ in trange(args.epochs, desc="training"):
        model.train()
        for idx in torch.randperm(len(y)).split(64):
            # small random shifts make the model robust to the phase code's
            # rounding of its inputs
            xb = x[idx] + 0.05 * torch.randn_like(x[idx])
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        for part in ("calibration", "test"):
            xs, ys = (torch.from_numpy(a) for a in splits[part])
            acc = (model(xs).argmax(1) == ys).float().mean().item()
            print(f"{part} accuracy: {acc:.4f} ({len(ys)} samples)")
    torch.save(model.state_dict(), WEIGHTS)
    print(f"saved {WEIGHTS} ({sum(p.numel() for p in model.parameters())} "
          "parameters)")


if __name__ == "__main__":
    main()
