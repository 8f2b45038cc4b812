"""NAT traversal groundwork (seed §3.3).

* ``stun`` — sans-IO STUN client transactions (RFC 5389/8489) over aioice's codec;
* ``classify`` — sans-IO RFC 5780 NAT behaviour discovery → :class:`NatClassification`;
* ``stun_io`` — the trio adapter: ``await classify_nat(servers)``;
* ``stun_server`` — a rate-limited STUN Binding server (RFC 5780 with two addresses × two ports);
* ``natpmp`` / ``portmap`` — port mapping (NAT-PMP, UPnP IGD); ``status`` / ``service`` — the
  NAT component and the :class:`NatStatus` it publishes.

Nothing is imported here, so importing a sans-IO core does not pull in trio.
"""
