"""The example classifier: uint8 and float [0, 1] images are the same input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsieve.shared.classifier import DigitNet, classifier_batch, evaluate, train_local


def test_uint8_and_float_images_train_and_evaluate_the_same(mnist_train):
    x8, y = mnist_train.images[:96], mnist_train.labels[:96]
    xf = x8.astype(np.float32) / 255.0  # the float form the SDK accepts
    results = []
    for x in (x8, xf, xf[:, None]):
        torch.manual_seed(0)
        model = DigitNet()
        loss = train_local(model, x, y, epochs=1, batch_size=32, seed=1)
        results.append((loss, evaluate(model, x, y), model.state_dict()))
    (loss8, eval8, state8), *others = results
    for loss, evaluated, state in others:
        assert loss == loss8 and evaluated == eval8
        for key, value in state8.items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def test_batch_is_in_unit_range_and_rejects_unscaled_floats(mnist_train):
    x8 = mnist_train.images[:4]
    batch = classifier_batch(x8.astype(np.float32) / 255.0)
    assert batch.shape == (4, 1, 28, 28) and batch.dtype == torch.float32
    assert float(batch.max()) == pytest.approx(1.0)  # not divided by 255 a second time
    torch.testing.assert_close(batch, classifier_batch(x8), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        classifier_batch(x8.astype(np.float32))
