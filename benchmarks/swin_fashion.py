"""A stock torchvision Swin on Fashion-MNIST: ANN vs SNN accuracy.

Trains (or loads) a small ``torchvision.models.SwinTransformer`` (patches
of 2 x 2: 14 x 14 tokens, windows of 7 x 7 with shifted windows and the
-100 mask, relative position bias, one patch merging; LayerNorm and GELU,
as the library builds it; only the patch embedding takes 1 channel), converts
it with calibration images held out from training, and runs the whole test
split through the engine (bit-exact with Lava ``fixed_pt``) for every
(T, B). Writes ``swin_fashion.md`` (accuracy, drop, agreement, energy and
steps per sample) to ``--out``.

Data: the Debian package ``dataset-fashion-mnist``
(``apt-get install dataset-fashion-mnist``). The trained weights are
kept next to the results (``swin_fashion.pt``) so that the sweep can be
rerun without training (``--epochs 0`` loads them).

    python benchmarks/swin_fashion.py --epochs 6
    python benchmarks/swin_fashion.py --epochs 0 --zero-background

``--zero-background`` converts the same function with the images' background
coded as exactly 0 (``swin_fashion_zero_background.md``): after the usual
mean/std normalisation the background, 43 % of the tokens, is -0.81, which
lies between two code levels at B = 1.15 (0.401 sigma of the input, between
1.15**-7 and 1.15**-6) and so is off by 6 to 8 % in every background pixel
alike, an error no later layer averages away.
"""
import argparse
import gzip
import pathlib
import platform
import sys
import time

import numpy as np
import torch
from torch import nn

from lava_spiked import convert
from lava_spiked.energy import energy
from lava_spiked.engine import Engine
from lava_spiked.progress import bar

DATA = pathlib.Path("/usr/share/datasets/fashion-mnist")
RESULTS = pathlib.Path(__file__).parent / "results"


def load(split: str):
    """Images (n, 1, 28, 28) in [0, 1], normalised, and labels."""
    path = DATA / f"{split}-images-idx3-ubyte.gz"
    if not path.exists():
        sys.exit(f"{path} is missing: apt-get install dataset-fashion-mnist")
    x = np.frombuffer(gzip.open(path).read(), np.uint8, offset=16)
    y = np.frombuffer(gzip.open(DATA / f"{split}-labels-idx1-ubyte.gz")
                      .read(), np.uint8, offset=8)
    x = (x.reshape(-1, 1, 28, 28).astype(np.float32) / 255 - 0.286) / 0.353
    return x, y.astype(np.int64)


def swin() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer
    model = SwinTransformer(patch_size=[2, 2], embed_dim=32, depths=[2, 2],
                            num_heads=[2, 4], window_size=[7, 7],
                            mlp_ratio=2.0, num_classes=10)
    model.features[0][0] = nn.Conv2d(1, 32, kernel_size=2, stride=2)
    return model


def zero_background(model, *images):
    """The model changed to take ``x - b`` for the background value ``b``
    (the images' minimum, 43 % of the tokens are background only): its
    2x2 stride-2 patch embedding, which pads nothing, takes ``W b`` into
    its bias, so it computes the same function; the images shifted."""
    b = float(images[0].min())
    conv = model.features[0][0]
    with torch.no_grad():
        conv.bias += conv.weight.sum((1, 2, 3)) * b
    return [x - b for x in images]


def train(model, x, y, epochs: int, seed: int = 0) -> None:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * (len(x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        for i in bar(range(len(x) // 128), f"epoch {epoch + 1}/{epochs}"):
            b = order[i * 128:(i + 1) * 128]
            xb = torch.from_numpy(x[b.numpy()])
            flip = torch.rand(len(b)) < 0.5  # horizontal flips
            xb[flip] = xb[flip].flip(-1)
            loss = nn.functional.cross_entropy(model(xb),
                                               torch.from_numpy(y[b.numpy()]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def logits_of(fn, x, desc):
    return np.concatenate([np.asarray(fn(x[i:i + 500]))
                           for i in bar(range(0, len(x), 500), desc)])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6,
                        help="0: load the saved weights")
    parser.add_argument("--T", type=int, nargs="+", default=[40, 24, 16])
    parser.add_argument("--B", type=float, nargs="+",
                        default=[1.15, 1.1, 1.2])
    parser.add_argument("--zero-background", action="store_true",
                        help="encode the images minus their background "
                        "value (the patch embedding's bias takes it: the "
                        "same function), so that background codes as 0")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x, y = load("train")
    test_x, test_y = load("t10k")
    # the last 2,000 training images: calibration only, never trained on
    train_x, train_y, calib = x[:-2000], y[:-2000], x[-2000:][:500]
    model = swin()
    weights = out / "swin_fashion.pt"
    if args.epochs:
        t0 = time.perf_counter()
        train(model, train_x, train_y, args.epochs)
        saved = dict(state_dict=model.state_dict(), epochs=args.epochs,
                     train_s=time.perf_counter() - t0)
        torch.save(saved, weights)
    else:
        saved = torch.load(weights)
        model.load_state_dict(saved["state_dict"])
        model.eval()
    with torch.no_grad():
        ann = logits_of(lambda b: model(torch.from_numpy(b)), test_x, "ANN")
    ann_acc = float((ann.argmax(1) == test_y).mean())
    if args.zero_background:
        test_x, calib = zero_background(model, test_x, calib)
    t0 = time.perf_counter()
    base = convert(model, calib, T=args.T[0], B=args.B[0])
    convert_s = time.perf_counter() - t0
    rows = []
    for T in args.T:
        for B in args.B:
            net = base.recode(B, T)
            engine = Engine(net, "fixed")
            logits = []
            for i in bar(range(0, len(test_x), 500), f"T={T} B={B}"):
                # spikes of the first 500 images for the energy model,
                # which takes about 30x the engine's time here
                result = engine(test_x[i:i + 500], warn=False,
                                record=i == 0)
                logits.append(result.logits.numpy())
                if i == 0:
                    report = energy(net, result)
            logits = np.concatenate(logits)
            acc = float((logits.argmax(1) == test_y).mean())
            rows.append((T, B, acc, ann_acc - acc,
                         float((logits.argmax(1) == ann.argmax(1)).mean()),
                         report.snn_joules * 1e9, report.ann_joules * 1e9,
                         net.num_steps))
            print(rows[-1], flush=True)
    command = "python benchmarks/swin_fashion.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    lines = [
        "# A stock torchvision Swin on Fashion-MNIST: ANN vs SNN", "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {platform.machine()}, Python "
        f"{platform.python_version()}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}. Model: torchvision "
        "`SwinTransformer(patch_size=[2, 2], embed_dim=32, depths=[2, 2], "
        "num_heads=[2, 4], window_size=[7, 7], mlp_ratio=2)`, 1-channel "
        f"patch embedding, {sum(p.numel() for p in model.parameters()):,} "
        f"parameters, trained {saved['epochs']} epochs on 58,000 training "
        f"images ({saved['train_s']:.0f} s); calibrated on 500 held-out "
        f"training images; converted in {convert_s:.1f} s. Engine mode "
        "`fixed` (bit-exact with Lava fixed_pt), the full test split "
        f"({len(test_y):,} images); energy per sample (45 nm model) over "
        f"the first 500 test images. ANN accuracy {ann_acc:.2%}.", "",
        "| T | B | SNN accuracy | drop (pp) | ANN/SNN agreement | SNN nJ | "
        "ANN nJ | SNN/ANN energy | steps per sample |",
        "|---|---|---|---|---|---|---|---|---|"]
    for T, B, acc, drop, agree, snn, ann_nj, steps in rows:
        lines.append(f"| {T} | {B} | {acc:.2%} | {100 * drop:.2f} | "
                     f"{agree:.2%} | {snn:.1f} | {ann_nj:.1f} | "
                     f"{snn / ann_nj:.2f} | {steps} |")
    if args.zero_background:
        lines[4:4] = [
            "", "Inputs: images minus their background value, which the "
            "patch embedding's bias takes back (the same function): the "
            "background, 43 % of the tokens, codes as exactly 0."]
    name = "swin_fashion_zero_background.md" if args.zero_background \
        else "swin_fashion.md"
    (out / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
