from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prozchain_discovery.wire.messages import (
    MAX_RECORDS_PER_MESSAGE,
    BootstrapRequest,
    BootstrapResponse,
    DecodeError,
    PexRequest,
    PexResponse,
    fit_records,
)
from prozchain_discovery.wire.pb import bootstrap_pb2, pex_pb2

DECODERS = [BootstrapRequest, BootstrapResponse, PexRequest, PexResponse]


def test_round_trips():
    assert BootstrapRequest.decode(BootstrapRequest("net", 7).encode()) == BootstrapRequest("net", 7)
    r = BootstrapResponse(1, "net", b"\x04\x7f\x00\x00\x01", [b"a", b"b"])
    assert BootstrapResponse.decode(r.encode()) == r
    assert PexRequest.decode(PexRequest("n", 50).encode()) == PexRequest("n", 50)
    p = PexResponse(2, [], 1500)
    assert PexResponse.decode(p.encode()) == p


def test_field_numbers_are_the_issue_s():
    # Fixed by issues #2 and #4: a change here is a wire break.
    f = bootstrap_pb2.BootstrapResponse.DESCRIPTOR.fields_by_name
    assert [f[n].number for n in ("status", "network_id", "observed_addr", "signed_records")] == [1, 2, 3, 4]
    f = pex_pb2.PexResponse.DESCRIPTOR.fields_by_name
    assert [f[n].number for n in ("status", "signed_records", "retry_after_ms")] == [1, 2, 3]
    assert bootstrap_pb2.BootstrapRequest.DESCRIPTOR.full_name == "prozchain.discovery.v1.BootstrapRequest"


def test_long_network_id_rejected():
    with pytest.raises(DecodeError):
        BootstrapRequest.decode(bootstrap_pb2.BootstrapRequest(network_id="x" * 65).SerializeToString())


def test_unknown_status_rejected():
    raw = pex_pb2.PexResponse()
    raw.status = 9  # type: ignore[assignment]
    with pytest.raises(DecodeError, match="unknown status"):
        PexResponse.decode(raw.SerializeToString())


def test_too_many_records_rejected():
    raw = pex_pb2.PexResponse(signed_records=[b""] * (MAX_RECORDS_PER_MESSAGE + 1))
    with pytest.raises(DecodeError):
        PexResponse.decode(raw.SerializeToString())


def test_fit_records_stays_within_a_frame():
    recs = [b"r" * 4000] * 40
    fitted = fit_records(recs)
    assert 0 < len(fitted) < 40
    assert len(PexResponse(0, fitted).encode()) < 64 * 1024


@settings(max_examples=400)
@given(st.binary(max_size=2048), st.sampled_from(DECODERS))
def test_arbitrary_bytes_give_typed_error(data, cls):
    try:
        cls.decode(data)
    except DecodeError:
        pass


@settings(max_examples=200)
@given(
    st.text(max_size=80),
    st.integers(0, 2**32 - 1),
    st.lists(st.binary(max_size=300), max_size=20),
    st.integers(0, 5),
)
def test_arbitrary_protobuf_gives_value_or_typed_error(net, n, records, status):
    raw = pex_pb2.PexResponse(signed_records=records, retry_after_ms=n)
    raw.status = status  # type: ignore[assignment]
    try:
        out = PexResponse.decode(raw.SerializeToString())
        assert out.signed_records == records
    except DecodeError:
        assert status > 2
    try:
        BootstrapRequest.decode(bootstrap_pb2.BootstrapRequest(network_id=net, max_peers=n).SerializeToString())
    except DecodeError:
        assert len(net.encode()) > 64
