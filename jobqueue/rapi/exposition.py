"""``/metrics``: the master's QueryMetrics answer in Prometheus' text format.

The official client library (``prometheus_client``) writes the text: each
scrape asks the master once and hands its families to a collector of a
registry made for that scrape, so nothing is cached between scrapes and the
values are the master's own (counters restart with the master).

``jobqueue_master_up`` is 1 when the master answered and 0 when it did not;
then it is the only metric, and the scrape itself still succeeds, so an
alert can tell "master down" from "rapi down".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from jobqueue.metrics import EXPORT_VERSION

__all__ = ["CONTENT_TYPE_LATEST", "render"]

_log = logging.getLogger(__name__)


class _Snapshot(Collector):
    """Yields the families of one QueryMetrics answer (None: the master did not answer)."""

    def __init__(self, export: dict[str, Any] | None) -> None:
        self._export = export

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "jobqueue_master_up", "1 if the master daemon answered this scrape, else 0"
        )
        up.add_metric([], 0.0 if self._export is None else 1.0)
        yield up
        if self._export is None:
            return
        if self._export.get("version") != EXPORT_VERSION:
            _log.warning("QueryMetrics answered version %r; skipped", self._export.get("version"))
            return
        for family in self._export.get("families", []):
            try:
                yield convert(family)
            except (KeyError, TypeError, ValueError) as err:
                _log.warning("Skipped the malformed metric %r: %s", family.get("name"), err)


def convert(family: dict[str, Any]) -> Metric:
    """One exported family (see ``jobqueue.metrics``) as a prometheus_client family."""
    name, doc, labels, kind = family["name"], family["help"], family["labels"], family["type"]
    if kind == "histogram":
        histogram = HistogramMetricFamily(name, doc, labels=labels)
        for values, series in family["samples"]:
            buckets = cumulative(family["buckets"], series["counts"])
            histogram.add_metric(values, buckets, float(series["sum"]))
        return histogram
    metric: CounterMetricFamily | GaugeMetricFamily
    if kind == "counter":
        metric = CounterMetricFamily(name, doc, labels=labels)
    elif kind == "gauge":
        metric = GaugeMetricFamily(name, doc, labels=labels)
    else:
        raise ValueError(f"unknown type {kind!r}")
    for values, value in family["samples"]:
        metric.add_metric(values, float(value))
    return metric


def cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (the last one above every bound) as Prometheus' cumulative buckets."""
    if len(counts) != len(bounds) + 1:
        raise ValueError("a histogram needs one count per bound and one for +Inf")
    buckets, running = [], 0
    for bound, count in zip([*map(float, bounds), float("inf")], counts, strict=True):
        running += int(count)
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
    return buckets


def render(export: dict[str, Any] | None) -> bytes:
    """The text format of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(export))
    return generate_latest(registry)
