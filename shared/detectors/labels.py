"""LabelCheck: uploads whose claimed label contradicts their image (confident learning).

An image detector cannot see a genuine digit with a wrong label: the image is normal, the
label is the poison. LabelCheck scores the *pair*. It trains the example classifier on the
pool itself with cross-fitting (each sample is predicted by a model that never saw it, nor any
byte-identical copy of it: copies share a fold) and label smoothing, and hands the
out-of-fold probabilities to cleanlab's ``find_label_issues`` (Northcutt, Jiang and Chuang,
JAIR 2021). The default rule, ``confident_learning``: class ``k``'s threshold is the mean
probability of ``k`` over the samples labelled ``k``; a sample is a label issue when some class
clears its threshold for it and the most probable such class is not the claimed one.

The rule needs no clean labels and no noise rate. It holds while each class's own label
stays the most common one among its images (under half of a class flipped): that is what
makes the thresholds meaningful. A class that is foreign to the federation (a held-out digit
with random labels) clears no threshold and is left to the image detector.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from fedsieve.shared.data.images import check_images, image_digests
from fedsieve.shared.task.classifier import DigitNet, predict_proba, train_local


class LabelCheck(BaseEstimator):
    """Flag samples whose claimed label the pool's own cross-fitted classifier contradicts.

    Parameters
    ----------
    folds : int, default 2
        Cross-fitting folds; every sample is scored by the model trained on the others.
    epochs : int, default 6
        Training epochs of each fold's classifier.
    batch_size : int, default 32
    learning_rate : float, default 0.05
        SGD (momentum 0.9) step size.
    label_smoothing : float, default 0.3
        Cross-entropy label smoothing: the classifier learns from labels some of which are
        wrong, and must not bet everything on them. In the probes behind the defaults (MNIST,
        25 % consistently flipped labels) the genuine digits flagged fell from about 10 %
        without it to 1-2 % with it.
    max_train : int, default 20000
        Largest training set of one fold (a seeded random subset beyond it): the check's cost
        stays bounded on large pools, scoring is what grows.
    min_class_size, max_classes : int, default 10, 100
        The classes checked: the at most ``max_classes`` most claimed ones, each claimed at
        least ``min_class_size`` times. Samples claiming another label are not checked (a
        rare class cannot be learnt from the pool, and a client claiming absurd labels must
        not make the check's memory grow).
    filter_by : str, default "confident_learning"
        cleanlab's rule. ``confident_learning`` drops the fewest genuine samples (4,000 MNIST
        digits, 25 % consistent flips: 72 % of the flips and 1.6 % of the genuine digits);
        ``prune_by_noise_rate`` (cleanlab's own default) finds more at a higher cost (92 % /
        3.4 %); see ``benchmarks/labels.py``.
    random_state : int, optional
        Seeds the folds, the subsets and the classifiers.

    Attributes
    ----------
    classes_ : ndarray
        The checked classes (claimed labels), sorted.
    checked_ : ndarray of shape (n,)
        True for the samples claiming one of ``classes_``.
    probabilities_ : ndarray of shape (n, n_classes)
        Out-of-fold class probabilities of each checked sample (float32; NaN rows for the
        others).
    class_thresholds_ : ndarray of shape (n_classes,)
        Mean probability of each class over the samples claiming it.
    suggested_labels_ : ndarray of shape (n,)
        The confident label of each sample; -1 where no class clears its threshold or the
        sample is not checked.
    decision_scores_ : ndarray of shape (n,)
        One minus the probability of the claimed label (higher = more suspicious; 0 for the
        samples not checked).
    labels_ : ndarray of shape (n,)
        1 where the confident label differs from the claimed one, else 0 (int64).
    """

    _parameter_constraints: dict = {
        "folds": [Interval(Integral, 2, None, closed="left")],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "max_train": [Interval(Integral, 1, None, closed="left")],
        "min_class_size": [Interval(Integral, 1, None, closed="left")],
        "max_classes": [Interval(Integral, 2, None, closed="left")],
        "filter_by": [StrOptions({"confident_learning", "prune_by_noise_rate", "prune_by_class",
                                  "both", "predicted_neq_given"})],
        "random_state": ["random_state"],
    }

    def __init__(self, *, folds: int = 2, epochs: int = 6, batch_size: int = 32,
                 learning_rate: float = 0.05, label_smoothing: float = 0.3,
                 max_train: int = 20_000, min_class_size: int = 10, max_classes: int = 100,
                 filter_by: str = "confident_learning",
                 random_state: int | None = None) -> None:
        self.folds = folds
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.label_smoothing = label_smoothing
        self.max_train = max_train
        self.min_class_size = min_class_size
        self.max_classes = max_classes
        self.filter_by = filter_by
        self.random_state = random_state

    def fit(self, X, y) -> LabelCheck:
        """Score every (image, claimed label) pair of the pool.

        Parameters
        ----------
        X : array-like
            The pool's images (see :func:`fedsieve.shared.data.images.check_images`).
        y : array-like of int
            The labels the clients claim, one per image.

        Returns
        -------
        LabelCheck
            ``self``, fitted.

        Raises
        ------
        ValueError
            Images the validator refuses, or labels that are not one integer per image.
        """
        self._validate_params()
        images = check_images(X, "X", allow_empty=True)
        claimed = _check_labels(y, len(images))
        self.classes_ = _modeled_classes(claimed, self.min_class_size, self.max_classes)
        self.checked_ = np.isin(claimed, self.classes_)
        rows = np.flatnonzero(self.checked_)
        encoded = np.searchsorted(self.classes_, claimed[rows])
        n, k = len(rows), len(self.classes_)
        seed = 0 if self.random_state is None else int(self.random_state)
        self.probabilities_ = np.full((len(images), k), np.nan, np.float32)
        self.suggested_labels_ = np.full(len(images), -1, np.int64)
        self.decision_scores_ = np.zeros(len(images))
        self.labels_ = np.zeros(len(images), np.int64)
        self.class_thresholds_ = np.ones(k)
        if k < 2 or n < 2 * self.folds:  # nothing to contradict
            return self
        # Imported here: only a server that checks labels needs cleanlab (and its pandas).
        from cleanlab.filter import find_label_issues

        probabilities = self._out_of_fold(images[rows], encoded, k, seed).astype(np.float64)
        probabilities /= probabilities.sum(1, keepdims=True)
        own = probabilities[np.arange(n), encoded]
        self.class_thresholds_ = np.array([own[encoded == c].mean() for c in range(k)])
        confident = probabilities >= self.class_thresholds_
        suggested = np.where(confident, probabilities, -1.0).argmax(1)
        self.probabilities_[rows] = probabilities
        self.suggested_labels_[rows] = np.where(confident.any(1), self.classes_[suggested], -1)
        self.decision_scores_[rows] = 1.0 - own
        # n_jobs=1: no worker processes inside a Flower server.
        self.labels_[rows] = find_label_issues(encoded, probabilities, filter_by=self.filter_by,
                                               n_jobs=1)
        return self

    def _out_of_fold(self, images: np.ndarray, encoded: np.ndarray, k: int,
                     seed: int) -> np.ndarray:
        """Each image's class probabilities from the fold model that did not train on it."""
        groups = _content_groups(images)
        counts = np.bincount(encoded, minlength=k)
        splitter = (StratifiedGroupKFold(self.folds, shuffle=True, random_state=seed)
                    if counts.min() >= self.folds else GroupKFold(self.folds))
        rng = np.random.default_rng(seed)
        probabilities = np.zeros((len(images), k), np.float32)
        for fold, (train, test) in enumerate(splitter.split(images, encoded, groups)):
            if len(train) > self.max_train:
                train = np.sort(rng.choice(train, self.max_train, replace=False))
            torch.manual_seed(seed * 1_009 + fold)
            model = DigitNet(num_classes=k, image_shape=images.shape[1:])
            train_local(model, images[train], encoded[train], epochs=self.epochs,
                        batch_size=self.batch_size, lr=self.learning_rate,
                        seed=seed * 1_013 + fold, label_smoothing=self.label_smoothing)
            probabilities[test] = predict_proba(model, images[test])
        return probabilities

    def predict(self) -> np.ndarray:
        """The fitted pool's verdicts (``labels_``): the check is transductive, it judges the
        pairs it was fitted on."""
        check_is_fitted(self, "labels_")
        return self.labels_


def _check_labels(y, n: int) -> np.ndarray:
    labels = np.asarray(y)
    if labels.shape != (n,):
        raise ValueError(f"y must hold one label per image: shape ({n},), got {labels.shape}")
    if n and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"y must hold integer class labels, got dtype {labels.dtype}; "
                         "encode class names as integers first")
    return labels.astype(np.int64)


def _modeled_classes(claimed: np.ndarray, min_size: int, most: int) -> np.ndarray:
    """The at most ``most`` most claimed labels with ``min_size`` claims or more, sorted."""
    labels, counts = np.unique(claimed, return_counts=True)
    keep = counts >= min_size
    labels, counts = labels[keep], counts[keep]
    return np.sort(labels[np.argsort(-counts, kind="stable")[:most]])


def _content_groups(images: np.ndarray) -> np.ndarray:
    """One group per distinct image content: byte-identical copies (a flipped duplicate of a
    genuine digit) must share a fold, or the copy's label would be learnt by heart."""
    return np.unique(image_digests(images), return_inverse=True)[1]


__all__ = ["LabelCheck"]
