"""Search the stream layouts a decode layer's DAG allows for the fastest one on a device profile.

The space, from the layer's dependencies alone (`space.Space`):

- a layout puts each node on one of `streams` streams, dispatches the nodes in an order the
  dependencies allow, and synchronises exactly: every dependency between streams is one wait
  (a fork / join, or an event where a fork would catch more), plus optional *barriers* (every
  stream joined into main and forked back), which is how SGLang closes its fork 0 and what every
  shipped dual-stream layout does;
- P1 (pruning, by construction): a node ordered with every other node (input_norm, mla_decode,
  ... allreduce_moe) stays on main: beside nothing, on another stream it would only add fences;
- R1 (restriction): each stream runs its nodes in the layer's reference order;
- R2 (restriction): at most `max_waits` cross-stream waits (default 2 x streams) and
  `max_barriers` barriers (default 1) per region, a region being the nodes between two P1 nodes;
- P2 (pruning): a stream whose nodes could only ever run beside each other is dominated by the
  same layout with those nodes on main (same happens-before, fewer fences);
- the variant (fused rope/cat/cache, shared-expert fusion) is part of the space: every variant
  whose nodes the profile measured, or the one asked for.

Equivalence (`enumerate.place`): the same captured graph (streams up to renaming within a
region, happens-before after transitive reduction, and the dispatch order of kernels one
completion releases together). `enumerate.region_layouts` walks each region once per class.

The search (`rank.BatchSearch`): a lower bound per layout (`bound`: the simulator's schedule with
sharing switched off), simulation in order of the bound until nothing left can enter the top K,
regions one at a time; a walk pruned by a partial bound where a region is too big to list (three
or four streams). `find.find` runs it for every batch and variant, places the shipped scenarios
in the space and explains the winners (`explain`); `write` turns layouts into scenario files.

Levels: `find` (one call: a `SearchResult`), `top_scenarios` (the top K of a batch as scenario
files with the overlaps each needs measured: what the GPU step measures), `region_layouts` /
`place` / `lower_bound` (the space and its bound). The simulator is reached through
`predict.rank_us` (ranking: `sim.run`) and `predict.predict` (reported layouts: `sim.predict`'s
interval and overlaps), nowhere else.

`measure.prove` (`search --measure`, imported apart: it needs torch and a GPU) measures the
overlaps the top K lack, searches again, and measures the top K beside serial and the best
shipped layout on the GPU.
"""

from streamlab.search.bound import lower_bound
from streamlab.search.enumerate import Limits, RegionLayout, place, region_layouts
from streamlab.search.find import Request, SearchResult, find
from streamlab.search.layout import Layout, build_program
from streamlab.search.predict import Predicted, predict, rank_us
from streamlab.search.space import Space
from streamlab.search.write import Found, top_scenarios

__all__ = ["Found", "Layout", "Limits", "Predicted", "RegionLayout", "Request", "SearchResult", "Space",
           "build_program", "find", "lower_bound", "place", "predict", "rank_us", "region_layouts", "top_scenarios"]
