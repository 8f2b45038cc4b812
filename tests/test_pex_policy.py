"""PEX policy, sans-IO, with an injected clock."""

from __future__ import annotations

from multiaddr import Multiaddr

from prozchain_discovery.config import PexConfig
from prozchain_discovery.pex.policy import PeerExchange, Verdict
from prozchain_discovery.records import RecordRejection, sign_record
from prozchain_discovery.wire.messages import PexRequest, PexResponse
from tests.conftest import identity

NET = "net"
ADDR = Multiaddr("/ip4/198.51.100.7/tcp/4001")


def _share(n):
    return [b"r%d" % i for i in range(100)][:n]


def test_answer_is_capped():
    pex = PeerExchange(PexConfig(max_peers_per_exchange=10), NET)
    _, req = identity(1)
    resp, verdict = pex.handle_request(req, PexRequest(NET, 500), 0.0, _share)
    assert verdict is Verdict.ANSWERED and len(resp.signed_records) == 10
    _, req2 = identity(2)
    resp, _ = pex.handle_request(req2, PexRequest(NET, 3), 0.0, _share)
    assert len(resp.signed_records) == 3


def test_wrong_network():
    pex = PeerExchange(PexConfig(), NET)
    resp, verdict = pex.handle_request(identity(1)[1], PexRequest("other", 5), 0.0, _share)
    assert verdict is Verdict.WRONG_NETWORK and resp.status == 1 and not resp.signed_records


def test_rate_limit_then_abusive():
    pex = PeerExchange(PexConfig(exchange_interval=60.0, ignored_limit=3), NET)
    who = identity(1)[1]
    assert pex.handle_request(who, PexRequest(NET), 0.0, _share)[1] is Verdict.ANSWERED
    resp, v = pex.handle_request(who, PexRequest(NET), 10.0, _share)
    assert v is Verdict.RATE_LIMITED and resp.status == 2
    assert 49_000 < resp.retry_after_ms <= 50_001
    assert pex.handle_request(who, PexRequest(NET), 11.0, _share)[1] is Verdict.RATE_LIMITED
    assert pex.handle_request(who, PexRequest(NET), 12.0, _share)[1] is Verdict.ABUSIVE
    # After the interval it is served again.
    assert pex.handle_request(who, PexRequest(NET), 61.0, _share)[1] is Verdict.ANSWERED


def test_should_request_follows_interval_and_retry_after():
    pex = PeerExchange(PexConfig(exchange_interval=60.0), NET)
    peer = identity(1)[1]
    assert pex.should_request_peers_from(peer, 0.0)
    pex.make_request(peer, 0.0)
    assert not pex.should_request_peers_from(peer, 59.0)
    assert pex.should_request_peers_from(peer, 60.0)
    pex.make_request(peer, 60.0)
    out = pex.read_response(peer, PexResponse(2, retry_after_ms=90_000), 60.0)
    assert out.retry_at == 150.0
    assert not pex.should_request_peers_from(peer, 149.0)
    assert pex.should_request_peers_from(peer, 150.0)


def test_read_response_verifies_each_record():
    me_key, me = identity(10)
    sender_key, sender = identity(11)
    k1, p1 = identity(12)
    pex = PeerExchange(PexConfig(max_peers_per_exchange=5), NET, local_peer_id=me)
    blobs = [
        sign_record(p1, [ADDR], k1.private_key),
        b"junk",
        sign_record(me, [ADDR], me_key.private_key),  # our own id
        sign_record(sender, [ADDR], sender_key.private_key),  # sender's own: not hearsay
    ]
    out = pex.read_response(sender, PexResponse(0, blobs), 0.0)
    assert [r.peer_id for r in out.records] == [p1]
    assert out.rejected == {RecordRejection.MALFORMED: 1, RecordRejection.SELF: 1}


def test_more_records_than_asked_are_counted():
    pex = PeerExchange(PexConfig(max_peers_per_exchange=2), NET)
    out = pex.read_response(identity(1)[1], PexResponse(0, [b"x"] * 5), 0.0)
    assert out.rejected[RecordRejection.TOO_LARGE] == 3


def test_addr_fetch_budget_and_saturation():
    pex = PeerExchange(PexConfig(addr_fetch_below=1000, addr_fetch_per_round=12, addr_fetch_window=600), NET)
    assert pex.addr_fetch_budget(10, 5.0) == 12
    assert pex.addr_fetch_budget(1000, 5.0) == 0  # book full enough
    assert pex.addr_fetch_budget(10, 601.0) == 0  # no longer young
    pex.note_fetch_round(asked=12, gained=100)
    assert pex.addr_fetch_budget(110, 65.0) == 12
    pex.note_fetch_round(asked=12, gained=5)  # the network has little more to tell
    assert pex.addr_fetch_budget(115, 125.0) == 0


def test_regular_answers_with_nothing_new_stop_address_fetch():
    """A 50-node network a minute old: the regular round's answers carry records the node
    knows already, so the fetch round that follows is skipped (it cost 370 handshakes)."""
    from prozchain_discovery.config import PexConfig
    from prozchain_discovery.pex.policy import PeerExchange

    pex = PeerExchange(PexConfig(), "net")
    pex.start_fetching(0.0)
    assert pex.fetch_due(1.0) and pex.addr_fetch_budget(40, 1.0) > 0  # nothing heard yet
    for _ in range(8):
        pex.note_answer(records=40, new=1)
    pex.note_answer(records=0, new=0)  # an empty answer says nothing
    assert pex.fetch_due(100.0)
    assert pex.fetch_saturated and pex.addr_fetch_budget(40, 100.0) == 0


def test_regular_answers_full_of_news_keep_address_fetch_going():
    from prozchain_discovery.config import PexConfig
    from prozchain_discovery.pex.policy import PeerExchange

    pex = PeerExchange(PexConfig(), "net")
    pex.start_fetching(0.0)
    for _ in range(8):
        pex.note_answer(records=50, new=45)
    assert pex.fetch_due(1.0) and not pex.fetch_saturated
    pex.note_fetch(gained=30)
    assert not pex.fetch_saturated
    pex.note_fetch(gained=1)  # one fetch that brought next to nothing ends the round
    assert pex.fetch_saturated
