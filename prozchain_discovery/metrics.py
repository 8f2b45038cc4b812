"""Counters and gauges for what discovery did, exportable as a dict or Prometheus text."""

from __future__ import annotations

from collections import Counter

__all__ = ["Metrics"]


class Metrics:
    """Named counters with optional labels: ``inc("pex_records_rejected", reason="bad_signature")``."""

    def __init__(self) -> None:
        self._counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self._gauges: dict[str, float] = {}

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        self._counters[(name, tuple(sorted(labels.items())))] += amount

    def set_gauge(self, name: str, value: float) -> None:
        self._gauges[name] = value

    def get(self, name: str, **labels: str) -> int:
        if labels:
            return self._counters[(name, tuple(sorted(labels.items())))]
        return sum(v for (n, _), v in self._counters.items() if n == name)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for (name, labels), value in sorted(self._counters.items()):
            key = name + ("{" + ",".join(f"{k}={v}" for k, v in labels) + "}" if labels else "")
            out[key] = value
        out.update(self._gauges)
        return out

    def prometheus(self, prefix: str = "prozchain_discovery_") -> str:
        lines = []
        for (name, labels), value in sorted(self._counters.items()):
            lab = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{prefix}{name}_total{{{lab}}} {value}" if lab else f"{prefix}{name}_total {value}")
        for name, gauge in sorted(self._gauges.items()):
            lines.append(f"{prefix}{name} {gauge}")
        return "\n".join(lines) + "\n"
