"""``prozchain-discovery status``: a running node's status.json as text (or raw with --json)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["cmd_status", "status_lines"]


def status_lines(st: dict[str, Any]) -> list[str]:
    """The text of ``prozchain-discovery status``; KeyError/TypeError/ValueError on a bad shape."""
    out = [
        f"peer id    {st['peer_id']}",
        f"network    {st['network_id']}    phase {st['phase']}    uptime {float(st['uptime']):.0f} s",
        f"peers      {st['connected']} connected ({st['outbound']} outbound), want {st['min_peers']}",
        f"sources    {', '.join(f'{k}={v}' for k, v in sorted(st['by_source'].items())) or '-'}",
        f"peer book  {st['peerdb']}",
        "",
        f"{'peer':<54} {'source':<10} {'dir':<4} {'for(s)':>7}  addr",
    ]
    for p in st["peers"]:
        out.append(f"{p['peer_id']:<54} {p['source']:<10} {p['direction']:<4} {p['for']:>7}  {p['addr']}")
    for seed in st.get("signed_seeds") or []:
        refused = ", ".join(f"{r} {n}" for r, n in (seed.get("rejected") or {}).items()) or "none"
        walked = "tree walked" if seed.get("walked") else "walking" if seed.get("phase") == "tree" else seed.get("phase")
        out.append(f"dns seed   {seed['url']}  seq {seed.get('seq')}, {seed.get('leaves_verified', 0)} peers "
                   f"verified, {walked}; refused: {refused}")
    out += _nat_lines(st.get("nat") or {})
    relays, served = st.get("autorelay") or {}, st.get("relay_server") or {}
    if relays.get("relays") or served.get("serving"):
        out.append("")
    if served.get("serving"):
        out.append(f"relay      serving hop, {served['reservations']} reservations, {served['circuits_open']} circuits")
    for r in relays.get("relays") or []:
        out.append(f"via relay  {r['peer_id']}  expires in {r['expires_in']} s")
    for a in relays.get("circuit_addrs") or []:
        out.append(f"circuit    {a}")
    punched = (st.get("holepunch") or {}).get("peers") or {}
    if punched:
        out += ["", f"{'hole punching with':<54} result"]
        for pid, h in punched.items():
            result = h.get("result") or h.get("state", "?")
            if result == "HolepunchNotSupported":
                result += f" ({h.get('reason', '')})"
            elif h.get("time_to_direct_s") is not None:
                result += f" after {h.get('attempts')} attempt(s), {h['time_to_direct_s']} s, via {h.get('remote_addr')}"
            out.append(f"{pid:<54} {result}")
    if st.get("backoff"):
        out += ["", f"{'backing off':<54} {'fails':>5} {'retry in':>9}  last error"]
        for key, b in st["backoff"].items():
            retry = "gave up" if b["given_up"] else f"{b['retry_in']}s"
            out.append(f"{key:<54} {b['failures']:>5} {retry:>9}  {str(b['last_error'])[:60]}")
    return out


def _nat_lines(nat: dict[str, Any]) -> list[str]:
    """NatStatus in ``status``: type, raw behaviours, reachability, external addresses, evidence."""
    if not nat:
        return []
    out = ["", f"nat        {nat.get('nat_type', 'unknown')} (mapping {nat.get('mapping', 'unknown')}, "
           f"filtering {nat.get('filtering', 'unknown')})    reachability {nat.get('reachability', 'unknown')}"]
    out += [f"external   {a}" for a in nat.get("external_addrs") or []]
    out += [f"evidence   {e}" for e in nat.get("evidence") or []]
    if nat.get("port_mapping_error"):
        out.append(f"mapping    {nat['port_mapping_error']}")
    return out


def cmd_status(args: argparse.Namespace) -> int:
    from ..fsutil import default_data_dir  # not ..host: that imports libp2p

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    path = data_dir / "status.json"
    unreadable = "the node may be writing it, or it is from another version; try again"
    try:
        st = json.loads(path.read_bytes())
    except FileNotFoundError:
        print(f"no status at {path}: is a node running with --data-dir {data_dir}?", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        print(f"error: {path} is not valid JSON ({exc}); {unreadable}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    if not isinstance(st, dict):
        print(f"error: {path} holds a JSON {type(st).__name__}, not a status object; {unreadable}", file=sys.stderr)
        return 1
    try:
        lines = status_lines(st)
    except KeyError as exc:
        print(f"error: {path} has no {exc} field; {unreadable}", file=sys.stderr)
        return 1
    except (TypeError, ValueError, AttributeError) as exc:
        print(f"error: {path} has a field of the wrong type ({exc}); {unreadable}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0
