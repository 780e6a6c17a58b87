"""LabelCheck: uploads whose claimed label contradicts their image.

An image detector cannot see a genuine digit with a wrong label: the image is normal, the
label is the poison. LabelCheck scores the *pair*. It trains the example classifier on the
pool itself with cross-fitting (each sample is predicted by a model that never saw it, nor any
byte-identical copy of it: copies share a fold) and label smoothing, in a few passes: the
first pass trains on every claim, each later pass only on the claims the previous pass's
classifier agreed with (its most probable class is the claimed one). The agreed set is
replaced each pass, not accumulated, as Rt-BiGAN's pseudo-labels are: a classifier trained on
fewer wrong labels contradicts the remaining ones more clearly.

The default rule, ``margin``: a claim is contradicted when some other class is more probable
than the claimed one by more than ``margin`` in the last pass's out-of-fold probabilities.
It needs no clean labels and no noise rate, and holds while each class's own label stays the
most common one among its images (under half of a class flipped). Each fold's classifier trains
on images shifted by up to 2 pixels, for at least 500 steps. On 4,000 MNIST digits
(``benchmarks/labels.py``, 2 seeds) it flags 98-99 % of consistent flips (25 %), random labels
(30 %) and flipped duplicates (40 %) at 0.7-0.9 % of the genuine digits, and 94 % of 40 %
consistent flips at 2.0 %; on 1,200 digits 95-99 % at 0.9-1.7 %, but 81 % of 40 % consistent
flips at 6.5 % (each class 60 % its own digit: a knife-edge). cleanlab's
``confident_learning`` and ``prune_by_noise_rate`` rules (Northcutt, Jiang and Chuang, JAIR
2021) remain available through ``filter_by``.

Content that fits no class (a held-out digit, letters, each claiming a random label) gets a
low probability for *every* class, so no other class contradicts its claim by a margin: the
score (``decision_scores_``) still ranks it, the rule flags only part of it.
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
    folds : int, default 4
        Cross-fitting folds; every sample is scored by the model trained on the others. Four
        folds train each model on three quarters of the pool: on clean MNIST the out-of-fold
        error fell from 2.8 % (two folds) to 2.0 %, and the genuine digits flagged with it.
    passes : int, default 3
        Training passes. The first trains on every claim, each later one only on the claims
        the previous pass agreed with. Measured (4,000 MNIST digits, 40 % consistent flips,
        ``margin`` rule): 35 % of the flips flagged after one pass, 84 % after two, 92 % after
        three, at 1.9 %, 2.0 % and 1.5 % of the genuine digits.
    epochs : int, default 6
        Training epochs of each fold's classifier in each pass.
    batch_size : int, default 32
    learning_rate : float, default 0.05
        SGD (momentum 0.9) step size.
    label_smoothing : float, default 0.3
        Cross-entropy label smoothing: the classifier learns from labels some of which are
        wrong, and must not bet everything on them. In the probes behind the defaults (MNIST,
        25 % consistently flipped labels) the genuine digits flagged fell from about 10 %
        without it to 1-2 % with it.
    max_shift : int, default 2
        Each fold's classifier trains on images moved by up to this many pixels along each
        axis (a fresh random shift per batch): it must read the content wherever it sits, and
        cannot learn a wrong label by heart from one exact image. With ``min_steps`` (4,000
        MNIST digits, 2 seeds): 40 % consistent flips 87.4 % flagged at 4.5 % of the genuine
        digits without, 93.7 % at 2.0 % with; the other pools gain 0.5-1.6 points. 0 turns
        it off.
    min_steps : int, default 500
        Fewest SGD steps of each fold's classifier in each pass: a fold with fewer than
        ``min_steps * batch_size / epochs`` training samples trains for more epochs than
        ``epochs``, until it reaches them. 500 is about what a fold of 3,000 samples (a pool
        of 4,000) takes in 6 epochs; in 6 epochs a smaller fold learns too little from shifted
        images (1,200 digits, shifts alone: 15-19 % of the genuine digits flagged at 40 %
        consistent flips, 3.2-4.8 % at 30 % random labels). With both on, four of five pools
        of 1,200 gain (flipped duplicates 84.6 % / 5.4 % -> 95.4 % / 1.7 %, clean 1.8 % ->
        1.0 %). The check's cost stops falling below pools of about 3,500 samples (folds of
        2,700): about 90 s on one torch thread. 0 keeps ``epochs``.
    max_train : int, default 20000
        Largest training set of one fold (a seeded random subset beyond it): the check's cost
        stays bounded on large pools, scoring is what grows.
    min_class_size, max_classes : int, default 10, 100
        The classes checked: the at most ``max_classes`` most claimed ones, each claimed at
        least ``min_class_size`` times. Samples claiming another label are not checked (a
        rare class cannot be learnt from the pool, and a client claiming absurd labels must
        not make the check's memory grow).
    filter_by : str, default "margin"
        The rule. ``margin``: another class beats the claimed one by more than ``margin``.
        The others are cleanlab's ``find_label_issues`` rules on the same probabilities
        (``confident_learning``, the 0.2 default; ``prune_by_noise_rate``, cleanlab's own
        default; ``prune_by_class``, ``both``, ``predicted_neq_given``); see
        ``benchmarks/labels.py`` for them side by side.
    margin : float, default 0.2
        Of the ``margin`` rule, in probability. Chosen among 0.2 and 0.5 on four kinds of
        wrong labels and a clean pool (``benchmarks/labels.py``): 0.2 held every kind at
        <= 2 % genuine flagged, so it is also what each kind gets when it is left out of the
        choice; 0.5 let 19-27 % of the flips through.
    random_state : int, optional
        Seeds the folds, the subsets and the classifiers.

    Attributes
    ----------
    classes_ : ndarray
        The checked classes (claimed labels), sorted.
    checked_ : ndarray of shape (n,)
        True for the samples claiming one of ``classes_``.
    probabilities_ : ndarray of shape (n, n_classes)
        Out-of-fold class probabilities of each checked sample in the last pass (float32; NaN
        rows for the others).
    agreed_ : ndarray of shape (n,)
        The samples the last pass trained on (the previous pass agreed with their claims).
    class_thresholds_ : ndarray of shape (n_classes,)
        Mean probability of each class over the samples claiming it.
    suggested_labels_ : ndarray of shape (n,)
        The most probable class of each checked sample; -1 for the others.
    decision_scores_ : ndarray of shape (n,)
        The contradiction: the best other class's probability minus the claimed class's, in
        [-1, 1] (higher = more suspicious; -1 for the samples not checked).
    threshold_ : float
        ``margin`` under the ``margin`` rule (``labels_`` is ``decision_scores_ >
        threshold_``); NaN under cleanlab's rules, which are not one cut on the score.
    labels_ : ndarray of shape (n,)
        1 where the claim is contradicted, else 0 (int64).
    models_ : list of torch.nn.Module
        The last pass's fold classifiers, for :meth:`score_pairs`.
    """

    _parameter_constraints: dict = {
        "folds": [Interval(Integral, 2, None, closed="left")],
        "passes": [Interval(Integral, 1, None, closed="left")],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "max_shift": [Interval(Integral, 0, None, closed="left")],
        "min_steps": [Interval(Integral, 0, None, closed="left")],
        "max_train": [Interval(Integral, 1, None, closed="left")],
        "min_class_size": [Interval(Integral, 1, None, closed="left")],
        "max_classes": [Interval(Integral, 2, None, closed="left")],
        "filter_by": [StrOptions({"margin", "confident_learning", "prune_by_noise_rate",
                                  "prune_by_class", "both", "predicted_neq_given"})],
        "margin": [Interval(Real, 0, 1, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, *, folds: int = 4, passes: int = 3, epochs: int = 6,
                 batch_size: int = 32, learning_rate: float = 0.05,
                 label_smoothing: float = 0.3, max_shift: int = 2, min_steps: int = 500,
                 max_train: int = 20_000,
                 min_class_size: int = 10, max_classes: int = 100, filter_by: str = "margin",
                 margin: float = 0.2, random_state: int | None = None) -> None:
        self.folds = folds
        self.passes = passes
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.label_smoothing = label_smoothing
        self.max_shift = max_shift
        self.min_steps = min_steps
        self.max_train = max_train
        self.min_class_size = min_class_size
        self.max_classes = max_classes
        self.filter_by = filter_by
        self.margin = margin
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
        self.decision_scores_ = np.full(len(images), -1.0)
        self.labels_ = np.zeros(len(images), np.int64)
        self.agreed_ = self.checked_.copy()
        self.class_thresholds_ = np.ones(k)
        self.threshold_ = float(self.margin) if self.filter_by == "margin" else float("nan")
        self.models_ = []
        if k < 2 or n < 2 * self.folds:  # nothing to contradict
            return self
        agreed = np.ones(n, bool)
        folds = self._folds(images[rows], encoded, k, seed)  # the same folds every pass
        for _ in range(self.passes):
            probabilities, self.models_ = self._out_of_fold(images[rows], encoded, agreed,
                                                            folds, k, seed)
            probabilities = probabilities.astype(np.float64)
            probabilities /= probabilities.sum(1, keepdims=True)
            last_agreed, agreed = agreed, probabilities.argmax(1) == encoded
        own = probabilities[np.arange(n), encoded]
        self.agreed_[rows] = last_agreed
        self.class_thresholds_ = np.array([own[encoded == c].mean() if (encoded == c).any()
                                           else 1.0 for c in range(k)])
        self.probabilities_[rows] = probabilities
        self.suggested_labels_[rows] = self.classes_[probabilities.argmax(1)]
        self.decision_scores_[rows] = _contradiction(probabilities, encoded)
        if self.filter_by == "margin":
            self.labels_[rows] = self.decision_scores_[rows] > self.margin
        else:
            # Imported here: only these rules need cleanlab (and its pandas). n_jobs=1: no
            # worker processes inside a Flower server.
            from cleanlab.filter import find_label_issues

            self.labels_[rows] = find_label_issues(encoded, probabilities,
                                                   filter_by=self.filter_by, n_jobs=1)
        return self

    def _folds(self, images: np.ndarray, encoded: np.ndarray, k: int,
               seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The (train, test) rows of each fold; byte-identical copies share a fold."""
        counts = np.bincount(encoded, minlength=k)
        splitter = (StratifiedGroupKFold(self.folds, shuffle=True, random_state=seed)
                    if counts.min() >= self.folds else GroupKFold(self.folds))
        return list(splitter.split(images, encoded, _content_groups(images)))

    def _out_of_fold(self, images: np.ndarray, encoded: np.ndarray, agreed: np.ndarray,
                     folds: list[tuple[np.ndarray, np.ndarray]], k: int,
                     seed: int) -> tuple[np.ndarray, list[torch.nn.Module]]:
        """Each image's class probabilities from the fold model that did not train on it
        (each model trains on the ``agreed`` samples of the other folds), and the models."""
        rng = np.random.default_rng(seed)
        probabilities = np.zeros((len(images), k), np.float32)
        models = []
        for fold, (train, test) in enumerate(folds):
            train = train[agreed[train]]
            if len(train) > self.max_train:
                train = np.sort(rng.choice(train, self.max_train, replace=False))
            torch.manual_seed(seed * 1_009 + fold)
            model = DigitNet(num_classes=k, image_shape=images.shape[1:])
            if len(train):
                steps_per_epoch = -(-len(train) // self.batch_size)
                epochs = max(self.epochs, -(-self.min_steps // steps_per_epoch))
                train_local(model, images[train], encoded[train], epochs=epochs,
                            batch_size=self.batch_size, lr=self.learning_rate,
                            seed=seed * 1_013 + fold, label_smoothing=self.label_smoothing,
                            max_shift=self.max_shift)
            probabilities[test] = predict_proba(model, images[test])
            models.append(model)
        return probabilities, models

    def score_pairs(self, X, y) -> np.ndarray:
        """The contradiction of new (image, claimed label) pairs, none of them in the fitted
        pool: the best other class's probability minus the claimed one's, under the mean of
        the last pass's fold classifiers (``decision_scores_``'s scale; compare with
        ``threshold_``). Claims outside ``classes_`` score -1 (not checked).

        Raises
        ------
        ValueError
            Images the validator refuses, or labels that are not one integer per image.
        """
        check_is_fitted(self, "labels_")
        images = check_images(X, "X", allow_empty=True)
        claimed = _check_labels(y, len(images))
        scores = np.full(len(images), -1.0)
        rows = np.flatnonzero(np.isin(claimed, self.classes_))
        if not self.models_ or not len(rows):
            return scores
        probabilities = np.mean([predict_proba(m, images[rows]) for m in self.models_], 0)
        scores[rows] = _contradiction(probabilities,
                                      np.searchsorted(self.classes_, claimed[rows]))
        return scores

    def predict(self) -> np.ndarray:
        """The fitted pool's verdicts (``labels_``): the check judges the pairs it was fitted
        on; :meth:`score_pairs` scores new ones."""
        check_is_fitted(self, "labels_")
        return self.labels_


def _contradiction(probabilities: np.ndarray, encoded: np.ndarray) -> np.ndarray:
    """The most probable other class's probability minus the claimed class's, per row."""
    rows = np.arange(len(encoded))
    own = probabilities[rows, encoded]
    others = probabilities.copy()
    others[rows, encoded] = -np.inf
    return others.max(1) - own


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
