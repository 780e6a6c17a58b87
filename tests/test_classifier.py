"""The example classifier: uint8 and float [0, 1] images are the same input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsieve.shared.task.classifier import (
    DigitNet,
    class_accuracy,
    classifier_batch,
    evaluate,
    evaluate_classes,
    predict,
    random_shift,
    train_local,
)


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


def test_one_pass_evaluation_matches_loss_accuracy_and_classes(mnist_train):
    torch.manual_seed(0)
    model = DigitNet()
    train_local(model, mnist_train.images[:100], mnist_train.labels[:100], epochs=1, seed=1)
    x, y = mnist_train.images[300:700], mnist_train.labels[300:700]  # unseen digits
    loss, accuracy, per_class = evaluate_classes(model, x, y, batch_size=128)
    expected_loss, expected_accuracy = evaluate(model, x, y)
    assert loss == pytest.approx(expected_loss) and accuracy == expected_accuracy
    np.testing.assert_allclose(per_class, class_accuracy(predict(model, x), y))
    assert 0.0 < accuracy < 1.0  # a partly trained model: the per-class figures differ
    assert np.isnan(evaluate_classes(model, x[:0], y[:0])[2]).all()


def test_random_shift_moves_each_image_by_whole_pixels_within_its_bound():
    images = torch.zeros(64, 1, 28, 28)
    images[:, 0, 10, 12] = 1.0
    moved = random_shift(images, 2, torch.Generator().manual_seed(0))
    rows, cols = (moved[:, 0] == 1.0).nonzero()[:, 1:].T
    assert len(rows) == 64 and torch.all(moved.sum(dim=(1, 2, 3)) == 1.0)
    assert set((rows - 10).tolist()) == set((cols - 12).tolist()) == {-2, -1, 0, 1, 2}
    again = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert torch.equal(moved, again)
