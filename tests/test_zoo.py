"""The pollution zoo: every kind's recipe, composition and the command-line form."""

from __future__ import annotations

import numpy as np
import pytest

from fedsieve.simulations.zoo import (
    KINDS,
    Constant,
    Fashion,
    HeldOutClass,
    InkMatchedFashion,
    Material,
    Mix,
    Trigger,
    parse_pollution,
)


@pytest.fixture(scope="module")
def material(mnist_train, fashion_train):
    normal = mnist_train.labels != 9
    return Material(mnist_train.images[normal][:400], mnist_train.labels[normal][:400],
                    fashion_train.images[:400], mnist_train.images[~normal][:40],
                    mnist_train.labels[~normal][:40])


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_makes_valid_seeded_images(name, material):
    kind = KINDS[name]()
    made = kind.sample(25, np.random.default_rng(3), material)
    x = made.images
    assert x.shape == (25, 28, 28) and x.dtype == np.uint8
    assert made.labels.shape == made.origin.shape == (25,)
    assert made.labels.dtype == made.origin.dtype == np.int64
    np.testing.assert_array_equal(x, kind.sample(25, np.random.default_rng(3), material).images)
    if kind.source in ("digits", "extra_digits"):
        other = kind.sample(25, np.random.default_rng(4), material).images
        assert not np.array_equal(x, other)
        base = getattr(material, kind.source)
        labels = material.digit_labels if kind.source == "digits" else material.extra_labels
        np.testing.assert_array_equal(made.labels, labels[made.origin])
        if name == "relabelled":  # the image is the digit itself: only its label will lie
            np.testing.assert_array_equal(x, base[made.origin])
        elif name != "held-out":  # every corruption changes the digit it starts from
            assert all((x[i] != base[o]).any() for i, o in enumerate(made.origin))
    elif kind.source == "fashion":  # used in order: callers hand out disjoint shares
        np.testing.assert_array_equal(made.origin, np.arange(25))
    else:
        assert (made.origin == -1).all()


def test_recipes_do_what_they_say(material):
    rng = np.random.default_rng(0)
    assert (Constant(value=0).sample(3, rng, material).images == 0).all()
    assert (Constant(value=255).sample(3, rng, material).images == 255).all()
    ink = InkMatchedFashion().sample(200, rng, material).images.reshape(200, -1).sum(1)
    raw = Fashion().sample(200, rng, material).images.reshape(200, -1).sum(1)
    digit_ink = material.digits.reshape(len(material.digits), -1).sum(1)
    assert abs(np.median(ink) / np.median(digit_ink) - 1) < 0.2 < abs(
        np.median(raw) / np.median(digit_ink) - 1)
    trig = Trigger(size=3, position="bottom-right", margin=1)
    x = trig.apply(material.digits[:5])
    assert (x[:, 24:27, 24:27] == 255).all()
    np.testing.assert_array_equal(x[:, :24], material.digits[:5, :24])
    assert (HeldOutClass(digit=9).sample(10, rng, material).labels == 9).all()


def test_mix_assigns_exact_shares_and_records_kinds(material):
    mix = parse_pollution("fashion*2,black,ink-fashion,trigger:size=3")
    made = mix.sample_with_kinds(50, np.random.default_rng(1), material)
    names, counts = np.unique(made.kinds, return_counts=True)
    assert dict(zip(names, counts)) == {"fashion": 20, "constant": 10, "ink-fashion": 10,
                                        "trigger": 10}
    assert mix.fashion_needed(50) == 30
    assert (made.images[made.kinds == "constant"] == 0).all()
    # Fashion kinds share material.fashion without reusing an image.
    fashion_origin = made.origin[made.sources == "fashion"]
    assert sorted(fashion_origin.tolist()) == list(range(30))
    np.testing.assert_array_equal(made.images[made.kinds == "fashion"],
                                  material.fashion[made.origin[made.kinds == "fashion"]])
    # Digit kinds point at the digit they corrupted (the trigger corner aside, it is intact).
    trig = made.kinds == "trigger"
    np.testing.assert_array_equal(made.images[trig][:, :24],
                                  material.digits[made.origin[trig]][:, :24])


def test_spec_round_trips_and_bad_specs_are_named():
    mix = parse_pollution("ink-fashion,white,trigger:size=4:position=random,held-out:digit=7")
    assert parse_pollution(mix.spec()) == mix
    assert mix.held_out_class == 7 and mix.needs_fashion
    assert parse_pollution(Constant(value=3)) == Mix((Constant(value=3),))
    for bad, match in [("glitter", "unknown pollution kind 'glitter'"),
                       ("trigger:colour=3", "unknown parameter"),
                       ("trigger:size=big", "size must be int"),
                       ("trigger:position=middle", "position must be one of"),
                       ("held-out:digit=3,held-out:digit=4", "at most one held-out"),
                       ("", "empty pollution spec")]:
        with pytest.raises(ValueError, match=match):
            parse_pollution(bad)


def test_detection_test_set_holds_the_requested_pollution():
    from fedsieve.shared.data.datasets import load_mnist
    from fedsieve.simulations.benchmark import detection_test_set

    paper = detection_test_set(per_side=300)
    assert (paper.kinds[paper.y == 1] == "fashion").all() and "fashion-mnist" in paper.sources
    held = detection_test_set(per_side=300, pollution="held-out:digit=3,trigger")
    assert held.x.shape == (600, 28, 28) and held.y.sum() == 300
    assert set(held.kinds[held.y == 1]) == {"held-out:digit=3", "trigger"}
    assert "fashion-mnist" not in held.sources  # nothing Fashion was needed
    test = load_mnist("test")
    label_of = {bytes(img): int(lab) for img, lab in zip(test.images, test.labels)}
    normal = [label_of[bytes(img)] for img in held.x[held.y == 0]]
    threes = [label_of[bytes(img)] for img in held.x[held.kinds == "held-out:digit=3"]]
    assert 3 not in normal and set(threes) == {3}


@pytest.mark.parametrize("name", ["letters", "sketches", "scribbles", "shapes", "chimeras"])
def test_content_kinds_are_drawn_like_digits(name, material):
    """Content pollution differs in what it shows, not in how it is drawn: MNIST's centring
    and box, and about a digit's ink."""
    from scipy.ndimage import center_of_mass

    x = KINDS[name]().sample(40, np.random.default_rng(0), material).images.astype(float)
    off = np.array([np.abs(np.subtract(center_of_mass(img), 13.5)).max() for img in x])
    assert np.median(off) < 0.5 and off.max() < 3  # a tall drawing may leave the frame a bit
    rows = (x.max(axis=2) > 0).sum(1)
    cols = (x.max(axis=1) > 0).sum(1)
    assert np.maximum(rows, cols).max() <= 23 and np.median(np.maximum(rows, cols)) >= 18
    ink, digit_ink = x.mean(), material.digits.astype(float).mean()
    assert 0.6 < ink / digit_ink < 1.6
