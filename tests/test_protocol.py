"""The wire protocol: uploads round-trip, and anything malformed raises ProtocolError only."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsieve.shared.protocol import upload as p
from fedsieve.shared.protocol.upload import (
    ProtocolError,
    Upload,
    UploadRequest,
    decode_upload,
    encode_upload,
)
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
    np.testing.assert_array_equal(np.concatenate(got_x), x[:, None])  # canonical NCHW
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
    np.testing.assert_array_equal(upload.x, x[:, None])


@pytest.mark.parametrize("bad", BAD_UPLOADS, ids=[b.name for b in BAD_UPLOADS])
def test_malformed_uploads_are_named(bad):
    x, ids = local_data(8)
    request = UploadRequest(image_shape=(1, 28, 28))
    valid = decode_upload(encode_upload(x, ids, request), request)  # the mutation breaks it
    assert len(valid.ids) == 8
    with pytest.raises(ProtocolError, match=bad.message) as caught:
        decode_upload(bad.mutate(encode_upload(x, ids, request)), request)
    assert_named(caught.value)


def test_every_bad_upload_has_its_own_name():
    assert len({b.name for b in BAD_UPLOADS}) == len(BAD_UPLOADS) == 13


def test_upload_cap():
    x, ids = local_data(50)
    request = UploadRequest()
    with pytest.raises(ProtocolError, match="exceeds the server's cap"):
        decode_upload(encode_upload(x, ids, request), request, max_upload=49)


def assert_named(err: ProtocolError) -> None:
    """The decoder rejected the upload by a check of its own, not through its last-resort
    wrapper around an unexpected exception (which would be a gap in the validation)."""
    assert str(err) and not str(err).startswith("malformed upload"), repr(err)


def assert_valid(upload: Upload, request: UploadRequest, max_upload: int) -> None:
    """The invariants every Upload the decoder returns must hold."""
    assert isinstance(upload, Upload)
    assert upload.x.dtype == np.uint8 and upload.x.ndim == 4
    if request.image_shape is not None:
        assert upload.x.shape[1:] == request.image_shape
    assert upload.ids.dtype == np.int64 and upload.ids.shape == (len(upload.x),)
    assert len(np.unique(upload.ids)) == len(upload.ids)
    assert 0 <= upload.num_selected <= upload.num_samples <= p.MAX_LOCAL_SAMPLES
    assert upload.num_selected <= max_upload
    assert upload.chunk_index == request.chunk_index
    assert upload.num_chunks == max(1, math.ceil(upload.num_selected / request.chunk_size))
    first = request.chunk_index * request.chunk_size
    assert len(upload.ids) == min(request.chunk_size, upload.num_selected - first)


def decode_or_reject(content, request: UploadRequest, max_upload: int = 1_000_000):
    """The decoder's contract: a valid Upload, or a named ProtocolError (returned as None).
    Any other exception propagates and fails the test."""
    try:
        upload = decode_upload(content, request, max_upload=max_upload)
    except ProtocolError as err:
        assert_named(err)
        return None
    assert_valid(upload, request, max_upload)
    return upload


config_values = st.one_of(st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                          st.text(max_size=5), st.booleans())
arrays = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.int64, np.float32, np.float64, np.int16]),
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=30),
)
META_KEYS = ["protocol", "num-samples", "num-selected", "chunk-index", "num-chunks"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meta=st.dictionaries(st.sampled_from([*META_KEYS, "other"]), config_values),
       upload=st.dictionaries(st.sampled_from(["x", "ids", "y"]), arrays),
       drop=st.sets(st.sampled_from([p.UPLOAD_META, p.UPLOAD_RECORD])))
def test_decoder_on_arbitrary_records(meta, upload, drop):
    content = RecordDict({p.UPLOAD_META: ConfigRecord(meta),
                          p.UPLOAD_RECORD: ArrayRecord({k: Array(v) for k, v in upload.items()})})
    for name in drop:
        del content[name]
    decode_or_reject(content, UploadRequest(chunk_size=16))


#: Changes to an upload's header: a value shifted by a small step (0: untouched), or any value.
header_changes = st.lists(
    st.tuples(st.sampled_from(META_KEYS),
              st.one_of(st.tuples(st.just("shift"), st.integers(-2, 2)),
                        st.tuples(st.just("set"), config_values))),
    min_size=1, max_size=2)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 40), chunk_size=st.integers(1, 8), chunk=st.integers(0, 3),
       fraction=st.sampled_from([1.0, 0.5]), as_float=st.booleans(), changes=header_changes,
       max_upload=st.sampled_from([1_000_000, 20]))
def test_decoder_on_near_valid_uploads(n, chunk_size, chunk, fraction, as_float, changes,
                                       max_upload):
    """A client's real upload, possibly with some header values changed: an upload that still
    answers the request decodes to the requested chunk's samples, any other is rejected by
    name."""
    x, ids = local_data(n, seed=n)
    request = UploadRequest(chunk_index=chunk, chunk_size=chunk_size, fraction=fraction,
                            sample_seed=n)
    content = encode_upload(x.astype(np.float32) / 255 if as_float else x, ids, request)
    meta = content[p.UPLOAD_META]
    original = dict(meta)
    for key, (how, value) in changes:
        if how == "set":
            meta[key] = value
        elif type(meta[key]) is int:
            meta[key] += value
    upload = decode_or_reject(content, request, max_upload)
    selected = p.select_for_upload(ids, request)
    untouched = dict(meta) == original and all(type(meta[k]) is int for k in original)
    if untouched and chunk * chunk_size < max(1, len(selected)) <= max_upload:
        assert upload is not None  # the untouched upload of an existing chunk is accepted
    if upload is not None:  # the samples are the requested chunk's, whatever the header says
        part = selected[chunk * chunk_size:(chunk + 1) * chunk_size]
        np.testing.assert_array_equal(upload.ids, ids[part])
        np.testing.assert_array_equal(upload.x, x[part][:, None])
        if untouched:
            assert upload.num_samples == n and upload.num_selected == len(selected)


def test_replies_name_their_partition_and_bad_names_are_ignored():
    from fedsieve.shared.protocol.upload import NODE_RECORD, read_partition, tag_partition

    assert read_partition(tag_partition(RecordDict(), {"partition-id": 3})) == 3
    assert read_partition(tag_partition(RecordDict(), {"partition-id": np.int64(0)})) == 0
    for config in ({}, {"partition-id": "3"}, {"partition-id": -1}, {"partition-id": True}):
        assert NODE_RECORD not in tag_partition(RecordDict(), config)
    # A hostile or broken label is no label; it never fails the reply.
    for record in (ConfigRecord({"partition-id": -5}), ConfigRecord({"partition-id": "x"}),
                   ConfigRecord({"other": 1})):
        assert read_partition(RecordDict({NODE_RECORD: record})) is None
    assert read_partition(RecordDict()) is None
