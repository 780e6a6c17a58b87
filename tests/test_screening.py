"""Screening verdicts depend on what was uploaded, not on Flower's random node ids."""

from __future__ import annotations

import numpy as np

from fedsieve.server.screening import ClientUpload, score_pool
from fedsieve.shared.detectors import make_detector


def _verdicts_by_sample(uploads: dict[int, ClientUpload], trusted: np.ndarray) -> dict:
    # Self-training draws batches by position: the pool's order reaches the verdicts.
    scoring = score_pool(uploads, trusted, lambda: make_detector(
        "rtbigan", self_training_rounds=1, steps_per_round=40, random_state=0))
    return {(int(i), bytes(x)): (float(s), int(v))
            for n, cv in scoring.verdicts.items()
            for i, s, v, x in zip(cv.ids, cv.scores, cv.verdicts, uploads[n].x)
            }, scoring.threshold


def test_verdicts_do_not_depend_on_node_ids(detector_data):
    x = detector_data.x
    # Two clients number their samples alike (0, 1, ...): ids collide across nodes.
    parts = [x[:250], x[250:]]
    uploads = lambda ids: {  # noqa: E731
        node: ClientUpload(node, part, np.arange(len(part), dtype=np.int64), len(part))
        for node, part in zip(ids, parts)}
    first, t1 = _verdicts_by_sample(uploads([11, 7]), detector_data.trusted)
    second, t2 = _verdicts_by_sample(uploads([3, 90]), detector_data.trusted)
    assert t1 == t2
    assert first == second
    assert sum(v for _, v in first.values()) > 0  # the fit really flags something
