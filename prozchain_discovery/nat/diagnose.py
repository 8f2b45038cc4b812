"""``prozchain-discovery nat``: what NAT is this machine behind, and can the gateway map a port?"""

from __future__ import annotations

from typing import Any

import trio

from .stun_io import classify_nat

__all__ = ["diagnose"]


async def diagnose(stun_servers: list[tuple[str, int]], *, port_mapping: bool, port: int) -> dict[str, Any]:
    """Classify with ``stun_servers`` (if any) and try to map TCP ``port`` (then delete it)."""
    out: dict[str, Any] = {}
    if stun_servers:
        try:
            r = await classify_nat(stun_servers, server_timeout=3.0)
        except OSError as exc:
            out["stun_error"] = str(exc)
        else:
            out.update(
                nat_type=r.nat_type.value, mapping=r.mapping.value, filtering=r.filtering.value,
                mapped_addr=None if r.mapped_addr is None else f"{r.mapped_addr[0]}:{r.mapped_addr[1]}",
                local_addr=f"{r.local_addr[0]}:{r.local_addr[1]}", rfc5780=r.rfc5780,
                took_ms=round(r.took * 1000, 1), note=r.note,
            )
    if port_mapping:
        # Here, not at the top: a STUN-only run does without prometheus_client and the mapper.
        from ..metrics import Metrics
        from .portmap import PortMapper

        mapper = PortMapper(lambda: [("tcp", port)], metrics=Metrics(), on_change=lambda _m: None)
        started = trio.current_time()
        mappings = await mapper.map_once()
        out["port_mapping"] = [
            {"method": m.method, "external": m.multiaddr, "lease": m.lifetime,
             "took_ms": round((trio.current_time() - started) * 1000, 1)}
            for m in mappings
        ]
        if not mappings:
            out["port_mapping_error"] = mapper.last_error or "no gateway answered"
        with trio.CancelScope(shield=True):
            await mapper.unmap_all()
    return out
