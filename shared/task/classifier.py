"""The example task's model: a small MNIST CNN, its local training and its evaluation.

Clients train it on the samples the server kept; the ServerApp evaluates the global model on
the clean test split. Both sides need it, so it lives here.

Every function takes ``device`` (:func:`~fedsieve.shared.devices.resolve_device`; ``"auto"``
is CUDA when torch sees a GPU, else the CPU) and hands the caller's model back where it was:
the model whose state dict goes into a Flower message stays on the CPU, only the work moves.
Batch orders are drawn on the CPU, so a seed gives the same training on every device.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedsieve.shared.data.images import DEFAULT_IMAGE_SHAPE, check_images
from fedsieve.shared.devices import module_device, resolve_device


class DigitNet(nn.Module):
    """Two conv blocks and a small head, sized from the images' shape: ~30k parameters at
    1x28x28 (64 hidden units; the pooled feature map is shrunk to at most 7x7 first, so
    larger images cost more convolution but no larger head), fast on two CPU cores.

    Parameters
    ----------
    num_classes : int, default 10
        Output logits.
    image_shape : tuple of int, default (1, 28, 28)
        (C, H, W) of the images it classifies.
    """

    def __init__(self, num_classes: int = 10,
                 image_shape: tuple[int, int, int] = DEFAULT_IMAGE_SHAPE) -> None:
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        self.image_shape = (c, h, w)
        self.conv1 = nn.Conv2d(c, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.pooled = (min(h // 4, 7), min(w // 4, 7))
        self.fc1 = nn.Linear(32 * self.pooled[0] * self.pooled[1], 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        if x.shape[-2:] != self.pooled:
            x = F.adaptive_avg_pool2d(x, self.pooled)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def classifier_batch(images: np.ndarray, name: str = "images") -> torch.Tensor:
    """Images as the classifier's input: float32 (N, C, H, W) in [0, 1].

    Accepts what the SDK accepts, through the one image validator: uint8 is scaled by 1/255,
    float32 already in [0, 1] is taken as it is (never scaled twice); (N, H, W) is grey.

    Raises
    ------
    ValueError
        Images of an unreadable shape or dtype, or float values outside [0, 1].
    """
    return torch.from_numpy(check_images(images, name, allow_empty=True))


def train_local(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, epochs: int = 1,
                batch_size: int = 32, lr: float = 0.05, seed: int = 0,
                label_smoothing: float = 0.0, max_shift: int = 0,
                device: str = "auto") -> float:
    """Train ``model`` in place with SGD (momentum 0.9); returns the mean training loss.

    ``label_smoothing`` (cross-entropy's) keeps a model trained on noisy labels from betting
    everything on them. ``max_shift`` moves each training image by a random whole number of
    pixels, up to that many along each axis, drawn afresh for every batch
    (:func:`random_shift`): the model must read the content wherever it sits, and cannot
    learn a wrong label by heart from one exact image. The training runs on ``device``; the
    model ends on the device it came on.

    Raises
    ------
    ValueError
        ``device`` is malformed or not available here.
    """
    dev = resolve_device(device)
    if len(images) == 0:
        return float("nan")
    generator = torch.Generator().manual_seed(seed)
    x, y = classifier_batch(images), torch.tensor(np.asarray(labels), dtype=torch.long)
    origin = module_device(model)
    model.to(dev)
    try:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        model.train()
        total, count = 0.0, 0
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), batch_size):
                idx = order[start:start + batch_size]
                batch = x[idx] if not max_shift else random_shift(x[idx], max_shift, generator)
                optimizer.zero_grad()
                loss = F.cross_entropy(model(batch.to(dev)), y[idx].to(dev),
                                       label_smoothing=label_smoothing)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                count += len(idx)
    finally:
        model.to(origin)
    return total / count


def random_shift(images: torch.Tensor, max_shift: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of an (N, C, H, W) batch moved by a random whole number of pixels, up to
    ``max_shift`` along each axis; the edge pixels fill what is uncovered."""
    n, _, height, width = images.shape
    steps = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    # affine_grid's coordinates span [-1, 1]: one pixel is 2 / size.
    theta[:, 0, 2] = steps[:, 0] * 2.0 / width
    theta[:, 1, 2] = steps[:, 1] * 2.0 / height
    grid = F.affine_grid(theta, [n, images.shape[1], height, width], align_corners=False)
    return F.grid_sample(images, grid.to(images.device), padding_mode="border",
                         align_corners=False)


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray,
             batch_size: int = 1000, *, device: str = "auto") -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of ``model`` on the given images."""
    loss, accuracy, _ = evaluate_classes(model, images, labels, batch_size, device=device)
    return loss, accuracy


@torch.no_grad()
def evaluate_classes(model: nn.Module, images: np.ndarray, labels: np.ndarray,
                     batch_size: int = 1000, num_classes: int = 10, *, device: str = "auto",
                     ) -> tuple[float, float, np.ndarray]:
    """(mean cross-entropy loss, accuracy, accuracy per class) of ``model`` from one forward
    pass over the images (the server evaluates every round: one pass, not two)."""
    y = torch.tensor(np.asarray(labels), dtype=torch.long)
    loss, predicted = 0.0, []
    for start, logits in _batched_logits(model, images, batch_size, device):
        loss += F.cross_entropy(logits, y[start:start + batch_size], reduction="sum").item()
        predicted.append(logits.argmax(1))
    if not predicted:
        return float("nan"), float("nan"), np.full(num_classes, np.nan)
    predicted = torch.cat(predicted).numpy().astype(np.int64)
    return (loss / len(images), float(np.mean(predicted == y.numpy())),
            class_accuracy(predicted, labels, num_classes))


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 1000, *,
            device: str = "auto") -> np.ndarray:
    """The class ``model`` predicts for each image, int64 (N,)."""
    out = [logits.argmax(1)
           for _, logits in _batched_logits(model, images, batch_size, device)]
    return torch.cat(out).numpy().astype(np.int64) if out else np.empty(0, np.int64)


@torch.no_grad()
def predict_proba(model: nn.Module, images: np.ndarray, batch_size: int = 1000, *,
                  device: str = "auto") -> np.ndarray:
    """Class probabilities (softmax) ``model`` gives each image, float64 (N, classes)."""
    out = [F.softmax(logits, dim=1).double()
           for _, logits in _batched_logits(model, images, batch_size, device)]
    return torch.cat(out).numpy() if out else np.empty((0, model.fc2.out_features))


def class_accuracy(predicted: np.ndarray, labels: np.ndarray,
                   num_classes: int = 10) -> np.ndarray:
    """Accuracy per class (NaN for a class absent from ``labels``), float (num_classes,)."""
    labels = np.asarray(labels)
    hits = np.bincount(labels, weights=np.asarray(predicted) == labels, minlength=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)


def _batched_logits(model: nn.Module, images: np.ndarray, batch_size: int,
                    device: str = "auto"):
    """(start, CPU logits) of each batch of ``images``, from an eval-mode copy of ``model``
    on ``device`` in channels-last layout: the server's per-round test passes run twice as
    fast on CPU, and the caller's model (whose state dict is sent to the clients) keeps its
    layout and device."""
    dev = resolve_device(device)
    model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last).to(dev)
    for start in range(0, len(images), batch_size):
        batch = classifier_batch(images[start:start + batch_size])
        yield start, model(batch.contiguous(memory_format=torch.channels_last).to(dev)).cpu()
