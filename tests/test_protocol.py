"""The wire protocol: uploads round-trip, and anything malformed raises ProtocolError only."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsieve.shared import protocol as p
from fedsieve.shared.protocol import ProtocolError, UploadRequest, decode_upload, encode_upload
from fedsieve.simulations.faults import BAD_UPLOADS


def local_data(n=25, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            np.arange(n, dtype=np.int64) * 7 + 3)


def test_chunked_round_trip():
    x, ids = local_data(25)
    got_x, got_ids = [], []
    for chunk in range(3):
        request = UploadRequest(chunk_index=chunk, chunk_size=10)
        upload = decode_upload(encode_upload(x, ids, request), request)
        assert upload.num_chunks == 3 and upload.num_samples == 25
        got_x.append(upload.x)
        got_ids.append(upload.ids)
    np.testing.assert_array_equal(np.concatenate(got_x), x)
    np.testing.assert_array_equal(np.concatenate(got_ids), ids)


def test_fraction_is_seeded_subset():
    x, ids = local_data(100)
    request = UploadRequest(fraction=0.3, sample_seed=4)
    upload = decode_upload(encode_upload(x, ids, request), request)
    assert len(upload.ids) == 30 and upload.num_selected == 30 and upload.num_samples == 100
    again = decode_upload(encode_upload(x, ids, request), request)
    np.testing.assert_array_equal(upload.ids, again.ids)


def test_float_upload_converted():
    x, ids = local_data(4)
    request = UploadRequest()
    upload = decode_upload(encode_upload(x.astype(np.float32) / 255, ids, request), request)
    np.testing.assert_array_equal(upload.x, x)


@pytest.mark.parametrize("bad", BAD_UPLOADS, ids=[b.name for b in BAD_UPLOADS])
def test_malformed_uploads_are_named(bad):
    x, ids = local_data(8)
    request = UploadRequest()
    with pytest.raises(ProtocolError, match=bad.message):
        decode_upload(bad.mutate(encode_upload(x, ids, request)), request)


def test_upload_cap():
    x, ids = local_data(50)
    request = UploadRequest()
    with pytest.raises(ProtocolError, match="exceeds the server's cap"):
        decode_upload(encode_upload(x, ids, request), request, max_upload=49)


config_values = st.one_of(st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                          st.text(max_size=5), st.booleans())
arrays = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.int64, np.float32, np.float64, np.int16]),
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=30),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meta=st.dictionaries(st.sampled_from(["protocol", "num-samples", "num-selected",
                                             "chunk-index", "num-chunks", "other"]),
                            config_values),
       upload=st.dictionaries(st.sampled_from(["x", "ids", "y"]), arrays),
       drop=st.sets(st.sampled_from([p.UPLOAD_META, p.UPLOAD_RECORD])))
def test_decoder_accepts_valid_or_raises_protocol_error(meta, upload, drop):
    content = RecordDict({p.UPLOAD_META: ConfigRecord(meta),
                          p.UPLOAD_RECORD: ArrayRecord({k: Array(v) for k, v in upload.items()})})
    for name in drop:
        del content[name]
    try:
        result = decode_upload(content, UploadRequest(chunk_size=16))
    except ProtocolError:
        return
    assert result.x.dtype == np.uint8 and result.x.shape[1:] == (28, 28)
    assert len(np.unique(result.ids)) == len(result.ids) == len(result.x)
