"""The engines' own Prometheus metrics, re-exported by the gateway with a ``replica`` label.

The load watcher already fetches each replica's metrics page; the last page of each is parsed here
(on scrape, not on every poll) and every sample gets ``replica="<id>"``, so one scrape of the
gateway shows vLLM's queue, cache and latency series for every replica side by side. A sample
that lacks ``model_name`` (vLLM's ``cache_config_info``, process series) gets the replica's model
where ``models`` says it; an engine's own ``replica`` label is kept as ``exported_replica``. HELP
and TYPE come once per family; a family another engine already typed differently is left out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector


class EngineMetrics(Collector):
    """Families of the replicas' last metrics pages (``pages``: replica id → page text)."""

    def __init__(self, pages: Mapping[str, bytes], models: Mapping[str, str] | None = None) -> None:
        self.pages = pages
        self.models = models if models is not None else {}  # replica id → served model (live)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for replica, page in list(self.pages.items()):
            model = self.models.get(replica)
            try:
                families = list(text_string_to_metric_families(page.decode(errors="replace")))
            except ValueError:  # a page we cannot parse: skip that replica this time
                continue
            for fam in families:
                out = merged.get(fam.name)
                if out is None:
                    out = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                elif out.type != fam.type:
                    continue  # one name, two types: the first engine's family stands
                for s in fam.samples:
                    labels = dict(s.labels)
                    if "replica" in labels:
                        labels["exported_replica"] = labels.pop("replica")
                    if model is not None:
                        labels.setdefault("model_name", model)
                    out.add_sample(s.name, {**labels, "replica": replica}, s.value, s.timestamp)
        yield from merged.values()
