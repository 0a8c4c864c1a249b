"""Make the worked case of docs/yours.md: a small ImageFolder of PNGs and a labels file in CIFAR-10N's
format, from Fashion-MNIST (any ImageFolder and labels file of yours take their place).

    python examples/your_data.py data/fm-folder     # writes data/fm-folder/{train,test}/CLASS/*.png
                                                    # and data/fm-folder-human.pt

The labels file holds, like CIFAR-10N's CIFAR-10_human.pt, one label per training image (in the
order rotelab reads the folder: class by class, files by name) under several keys: clean_label, and
worse_label, where a fifth of the images carry the label of the class a person most confuses them
with (T-shirt/shirt, pullover/coat, sneaker/ankle boot...: class-conditional noise, not uniform).
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rotelab.config import FitConfig
from rotelab.data import load_data

CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
CONFUSED = {0: 6, 6: 0, 2: 4, 4: 2, 3: 4, 1: 3, 5: 7, 7: 9, 9: 7, 8: 2}   # class -> the class it is mistaken for


def main(out: str, per_class_train: int = 100, per_class_test: int = 50, noise: float = 0.2, seed: int = 0):
    root = Path(out)
    data = load_data(FitConfig(dataset="fashion-mnist", normalize="none"))
    rng = np.random.default_rng(seed)
    labels = {}
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        s = getattr(data, split)
        x, y = (s.x[:, 0].numpy() * 255).round().astype(np.uint8), s.y.numpy()
        kept = []
        for c, name in enumerate(CLASSES):
            folder = root / split / f"{c}-{name}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, j in enumerate(rng.choice(np.flatnonzero(y == c), per_class, replace=False)):
                Image.fromarray(x[j]).convert("RGB").save(folder / f"{i:04d}.png")   # 3 channels, as photos
                kept.append(c)
        labels[split] = np.array(kept)
    clean = labels["train"]
    worse = clean.copy()
    flip = rng.random(len(clean)) < noise
    worse[flip] = [CONFUSED[c] for c in clean[flip]]
    torch.save({"clean_label": clean, "worse_label": worse, "aggre_label": clean}, f"{root}-human.pt")
    print(f"{root}: {len(clean)} train and {len(labels['test'])} test images; {root}-human.pt: "
          f"worse_label differs from the truth on {int((worse != clean).sum())} images")


if __name__ == "__main__":
    main(*sys.argv[1:2])
