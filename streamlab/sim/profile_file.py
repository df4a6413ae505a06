"""The device profile file: YAML (read with the safe loader), format 2, validated when loaded.

Every problem ends in one `Failure(EXIT_BAD_INPUT)` naming the file, the key and what is
accepted: a missing section, an unknown key, a parameter that is negative, zero or NaN where it
cannot be, a node table naming nodes the model's layer lacks, a name that cannot name result
files, a YAML alias (a few lines of them expand to billions of values: a profile never needs one). `check_profile_for` then checks a
profile against the layer it is asked to simulate: the model it was calibrated for, and, for a
measured profile, a latency for every node of the layer.

    format: 2
    name: h100
    streams: cuda                     # cuda | hip
    hardware: h100                    # models/hardware.py entry (compute peaks of roofline floors)
    provenance: {basis: measured, device: ..., driver: ..., versions: {...}, date: ..., command: ...,
                 shape: {model: glm5, context: 8192, tp: 8, page_size: 64, kv_cache: fp8},
                 batches: [1, 4, 16, 64], kernel_hash: sha256:..., stale: '',
                 settings: {backend: triton}, stages: {serial serial b4: 17.2, ...},   # calibrate --measure
                 added: [{date: ..., command: ..., scenarios: [...], pairs: [b4 a|b], seconds: ...}]}  # --for
    hbm_gbs: {value: 2963.5, source: ...}                     # every parameter: value or by_batch,
    launch_gap_us: {by_batch: {1: -0.15, 4: -0.25}, source: ...}   # its source, optional spread
    ...
    node_us: {input_norm: {1: 3.06, 4: 3.15}, ...}
    pair_measures: {q_b_proj|idx_wq_b: {4: [7.07, 7.89, 17.6]}}   # first, second, together us
"""

from __future__ import annotations

import math
from dataclasses import fields
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.io import NAME, is_name, parse_yaml
from streamlab.layer import DENSE_ONLY, Layer, Variant, build_layer
from streamlab.models import MODELS, TINY, RankDims, Shape
from streamlab.models.hardware import HARDWARE
from streamlab.sim.profile import (
    PARAMS,
    UNMODELLED,
    BatchTable,
    DeviceProfile,
    PairMeasure,
    Param,
    per_batch,
    variant_key,
)
from streamlab.sim.provenance import (
    MEASURED,
    PUBLISHED,
    CalibrationShape,
    PairsAdded,
    Provenance,
)

FORMAT = 2
REQUIRED = ("format", "name", "streams", "provenance", "hbm_gbs", "launch_gap_us", "fence_us", "graph_entry_us",
            "ar_concurrency_factor", "multi_stream_entry_us", "concurrency_slowdown", "calibration_noise",
            "node_us")
OPTIONAL = ("hip_queues", "hip_source", "ar_scope", "hardware", "multi_stream_graph_entry_us", "multi_stream_launch_gap_us",
            "default_sm_demand", "overlap_model_spread", "queue_wait_kernel_us", "op_overhead_us", "op_efficiency", "node_kernels",
            "node_source", "variant_source", "variant_node_us", "sm_source", "sm_demand", "pair_source",
            "pair_variant", "pair_measures", "reference")
# accepted values of each parameter: (lowest, lowest allowed itself, highest, what it means)
RANGES = {
    "hbm_gbs": (0.0, False, math.inf, "> 0 GB/s"),
    "launch_gap_us": (-math.inf, False, math.inf, "any finite us (below 0: kernels run shorter than profiled)"),
    "multi_stream_launch_gap_us": (-math.inf, False, math.inf, "any finite us"),
    "fence_us": (0.0, True, math.inf, ">= 0 us"),
    "graph_entry_us": (0.0, True, math.inf, ">= 0 us"),
    "multi_stream_entry_us": (0.0, True, math.inf, ">= 0 us"),
    "multi_stream_graph_entry_us": (0.0, True, math.inf, ">= 0 us"),
    "ar_concurrency_factor": (0.0, False, math.inf, "> 0 (1: the all-reduce is not slowed)"),
    "concurrency_slowdown": (0.0, True, math.inf, ">= 0"),
    "queue_wait_kernel_us": (0.0, True, math.inf, ">= 0 us per kernel"),
    "default_sm_demand": (0.0, True, 1.0, "0 to 1 (a share of the SMs / CUs)"),
    "calibration_noise": (0.0, True, 1.0, "0 to 1 (a fraction of the layer latency)"),
    "overlap_model_spread": (0.0, True, math.inf, ">= 0 (in units of the shorter kernel)"),
}
LATENCY = (0.0, False, math.inf, "> 0 us")
SHARE = (0.0, True, 1.0, "0 to 1")


def profile_path(name_or_path: str) -> Path:
    """A shipped profile's name (no suffix) or a YAML path."""
    path = Path(name_or_path)
    return Path(str(resources.files("streamlab.sim") / "profiles" / f"{name_or_path}.yaml")) if not path.suffix else path


def shipped_profiles() -> list[str]:
    return sorted(p.stem for p in (Path(str(resources.files("streamlab.sim"))) / "profiles").glob("*.yaml"))


def load_profile(name_or_path: str) -> DeviceProfile:
    path = profile_path(name_or_path)
    try:
        data = path.read_bytes()
    except OSError as e:
        if Path(name_or_path).suffix:
            raise Failure(f"{path}: cannot read the profile: {e.strerror}", EXIT_BAD_INPUT) from None
        raise Failure(f"no simulator profile {name_or_path!r}; shipped: {', '.join(shipped_profiles())}",
                      EXIT_BAD_INPUT) from None
    return parse_profile(parse_yaml(data, str(path), "profile"), str(path))


def parse_profile(raw, path: str) -> DeviceProfile:
    """A profile from its YAML document; `path` names the file in every message."""
    r = _Reader(path)
    if not isinstance(raw, dict):
        r.fail("", "a profile is a mapping of sections", f"sections {', '.join(REQUIRED)}")
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        r.fail(missing[0], "missing section", f"every profile has {', '.join(REQUIRED)}")
    unknown = sorted(set(raw) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        r.fail(unknown[0], "unknown section", ", ".join(REQUIRED + OPTIONAL))
    if raw["format"] != FORMAT:
        r.fail("format", f"format {raw['format']!r} is not this version's", f"format: {FORMAT}")
    prov = r.provenance(raw["provenance"])
    names = _node_names()
    node_us = r.tables("node_us", raw["node_us"], names, LATENCY)
    variant_node_us = {}
    for key, tables in r.mapping("variant_node_us", raw.get("variant_node_us", {})).items():
        variant = r.variant(f"variant_node_us.{key}", key)
        variant_node_us[key] = r.tables(f"variant_node_us.{key}", tables,
                                        _layer_names(variant), LATENCY)
    if not is_name(raw["name"]):
        r.fail("name", f"{str(raw['name'])[:60]!r} cannot name result files", NAME)
    return DeviceProfile(
        name=r.text("name", raw["name"]), streams=r.choice("streams", raw["streams"], ("cuda", "hip")),
        provenance=prov,
        **{k: r.param(k, raw[k]) if k in raw else _default(k) for k in PARAMS},
        ar_scope=r.choice("ar_scope", raw.get("ar_scope", "concurrent"), ("concurrent", "graph")),
        hardware=r.choice("hardware", raw.get("hardware", ""), ("", *HARDWARE)),
        hip_queues=r.count("hip_queues", raw.get("hip_queues", 4)),
        hip_source=r.text("hip_source", raw.get("hip_source", "")),
        op_overhead_us={k: r.param(f"op_overhead_us.{k}", v, LATENCY)
                        for k, v in r.mapping("op_overhead_us", raw.get("op_overhead_us", {})).items()},
        op_efficiency={k: r.param(f"op_efficiency.{k}", v, (0.0, False, 1.0, "0 to 1 of the copy bandwidth"))
                       for k, v in r.mapping("op_efficiency", raw.get("op_efficiency", {})).items()},
        node_us=node_us,
        node_kernels={n: r.count(f"node_kernels.{n}", k) for n, k in
                      r.named("node_kernels", raw.get("node_kernels", {}), names).items()},
        node_source=r.text("node_source", raw.get("node_source", "")),
        variant_node_us=variant_node_us, variant_source=r.text("variant_source", raw.get("variant_source", "")),
        sm_demand=r.tables("sm_demand", raw.get("sm_demand", {}), names, SHARE),
        sm_source=r.text("sm_source", raw.get("sm_source", "")),
        pair_measures=r.pairs(raw.get("pair_measures", {}), names),
        pair_variant=vars(r.variant("pair_variant", raw.get("pair_variant", {}))),
        pair_source=r.text("pair_source", raw.get("pair_source", "")),
        reference=r.mapping("reference", raw.get("reference", {})), origin=path)


def _default(key: str) -> Param:
    if key == "overlap_model_spread":
        return DeviceProfile.__dataclass_fields__[key].default
    return UNMODELLED


class _Reader:
    """Typed reads of one profile document, each failing with the file and the key."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, problem: str, accepted: str):
        where = f"{self.path}: {key}: " if key else f"{self.path}: "
        raise Failure(f"{where}{problem}; accepted: {accepted}", EXIT_BAD_INPUT)

    def number(self, key: str, v, accepted=(-math.inf, False, math.inf, "a number")) -> float:
        lo, inclusive, hi, words = accepted
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(key, f"{v!r} is not a number", words)
        x = float(v)
        if math.isnan(x) or math.isinf(x) or x < lo or (x == lo and not inclusive) or x > hi:
            self.fail(key, f"{v!r} is out of range", words)
        return x

    def count(self, key: str, v) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            self.fail(key, f"{v!r} is not a positive integer", "1, 2, ...")
        return v

    def text(self, key: str, v) -> str:
        if not isinstance(v, str):
            self.fail(key, f"{v!r} is not text", "a string")
        return v

    def choice(self, key: str, v, accepted: tuple[str, ...]) -> str:
        if v not in accepted:
            self.fail(key, f"{v!r} is not known", ", ".join(repr(a) for a in accepted))
        return v

    def mapping(self, key: str, v) -> dict:
        if not isinstance(v, dict):
            self.fail(key, f"{v!r} is not a mapping", "a mapping")
        return v

    def named(self, key: str, v, names: list[str]) -> dict:
        """A mapping keyed by node names of the layer."""
        for n in self.mapping(key, v):
            if n not in names:
                self.fail(f"{key}.{n}", "no such node in the layer", ", ".join(names))
        return v

    def batch_table(self, key: str, v, accepted) -> BatchTable:
        table = self.mapping(key, v)
        if not table:
            self.fail(key, "empty", "{batch: value, ...}")
        out = {}
        for b, x in table.items():
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                self.fail(key, f"batch {b!r} is not a positive integer", "{batch: value, ...}")
            out[b] = self.number(f"{key}.{b}", x, accepted)
        return dict(sorted(out.items()))

    def tables(self, key: str, v, names: list[str], accepted) -> dict[str, BatchTable]:
        return {n: self.batch_table(f"{key}.{n}", t, accepted) for n, t in self.named(key, v, names).items()}

    def param(self, key: str, v, accepted=None) -> Param:
        accepted = accepted or RANGES[key]
        d = self.mapping(key, v)
        keys = set(d) - {"source", "spread", "spread_by_batch"}
        if "source" not in d or keys not in ({"value"}, {"by_batch"}):
            self.fail(key, f"has {sorted(d)}", "{value: ..., source: ...} or {by_batch: {batch: value}, "
                      "source: ...}, each with an optional spread: ... or spread_by_batch: {batch: ...}")
        spread_range = (0.0, True, math.inf, ">= 0, in the parameter's unit")
        spread = self.batch_table(f"{key}.spread_by_batch", d["spread_by_batch"], spread_range) \
            if "spread_by_batch" in d else None
        if "by_batch" in d:
            table = self.batch_table(f"{key}.by_batch", d["by_batch"], accepted)
            p = per_batch(table, self.text(f"{key}.source", d["source"]), spread)
        else:
            p = Param(self.number(f"{key}.value", d["value"], accepted), self.text(f"{key}.source", d["source"]),
                      None, 0.0, spread)
        if "spread" in d:
            return Param(p.value, p.source, p.by_batch, self.number(f"{key}.spread", d["spread"], spread_range),
                         p.spread_by_batch)
        return p

    def variant(self, key: str, v) -> Variant:
        """A variant as a mapping of flags or as its `variant_key` text."""
        if isinstance(v, str):
            try:
                v = {k: {"true": True, "false": False}[x] for k, x in (part.split("=") for part in v.split(","))}
            except (ValueError, KeyError):
                self.fail(key, f"{v!r} is not a variant key", variant_key(Variant()))
        flags = [f.name for f in fields(Variant)]
        for k, x in self.mapping(key, v).items():
            if k not in flags or not isinstance(x, bool):
                self.fail(f"{key}.{k}", f"{x!r} is not a variant flag", ", ".join(f"{f}: true|false" for f in flags))
        return Variant(**v)

    def provenance(self, v) -> Provenance:
        d = self.mapping("provenance", v)
        need = ("basis", "device", "shape", "batches", "date", "command")
        for k in need:
            if k not in d:
                self.fail(f"provenance.{k}", "missing", ", ".join(need) + " (and driver, versions, "
                          "kernel_hash, stale)")
        s = self.mapping("provenance.shape", d["shape"])
        shape = CalibrationShape(
            model=self.choice("provenance.shape.model", s.get("model"), tuple(MODELS)),
            context=self.count("provenance.shape.context", s.get("context")),
            tp=self.count("provenance.shape.tp", s.get("tp")),
            page_size=self.count("provenance.shape.page_size", s.get("page_size")),
            kv_cache=self.choice("provenance.shape.kv_cache", s.get("kv_cache"), ("fp8", "bf16")))
        try:  # the simulator builds the layer at this shape to scale node times from it
            RankDims(MODELS[shape.model], Shape(1, shape.context, shape.tp, shape.page_size, shape.kv_cache))
        except ValueError as e:
            self.fail("provenance.shape", str(e), f"a shape {shape.model} runs at (a tp that divides its heads)")
        batches = d["batches"]
        if not isinstance(batches, list) or not batches:
            self.fail("provenance.batches", f"{batches!r}", "a list of the batch sizes measured")
        hash_ = d.get("kernel_hash")
        if hash_ is not None and not (isinstance(hash_, str) and hash_.startswith("sha256:")):
            self.fail("provenance.kernel_hash", f"{hash_!r}", "sha256:... (streamlab.sim.provenance.kernel_hash) "
                      "or null for kernels that are not streamlab's")
        versions = self.mapping("provenance.versions", d.get("versions", {}))
        settings = self.mapping("provenance.settings", d.get("settings", {}))
        stages = {str(k): self.number(f"provenance.stages.{k}", x, (0.0, True, math.inf, ">= 0 seconds"))
                  for k, x in self.mapping("provenance.stages", d.get("stages", {})).items()}
        added = d.get("added", [])
        if not isinstance(added, list):
            self.fail("provenance.added", f"{added!r}", "a list of {date, command, scenarios, pairs, seconds}")
        return Provenance(
            basis=self.choice("provenance.basis", d["basis"], (MEASURED, PUBLISHED)),
            device=self.text("provenance.device", d["device"]), shape=shape,
            batches=tuple(self.count(f"provenance.batches.{i}", b) for i, b in enumerate(batches)),
            date=str(d["date"]), command=self.text("provenance.command", d["command"]),
            driver=str(d.get("driver", "")), versions={str(k): str(x) for k, x in versions.items()},
            kernel_hash=hash_, stale=self.text("provenance.stale", d.get("stale", "")),
            settings={str(k): str(x) for k, x in settings.items()}, stages=stages,
            added=tuple(self.pairs_added(f"provenance.added.{i}", a) for i, a in enumerate(added)))

    def pairs_added(self, key: str, v) -> PairsAdded:
        d = self.mapping(key, v)
        need = ("date", "command", "scenarios", "pairs", "seconds")
        if set(d) != set(need):
            self.fail(key, f"has {sorted(d)}", ", ".join(need))

        def texts(k: str) -> tuple[str, ...]:
            if not isinstance(d[k], list) or not all(isinstance(x, str) for x in d[k]):
                self.fail(f"{key}.{k}", f"{d[k]!r}", "a list of strings")
            return tuple(d[k])
        return PairsAdded(str(d["date"]), self.text(f"{key}.command", d["command"]), texts("scenarios"),
                          texts("pairs"), self.number(f"{key}.seconds", d["seconds"], (0.0, True, math.inf, ">= 0")))

    def pairs(self, v, names: list[str]) -> tuple[PairMeasure, ...]:
        out = []
        for key, per in self.mapping("pair_measures", v).items():
            first, _, second = str(key).partition("|")
            for n in (first, second):
                if n not in names:
                    self.fail(f"pair_measures.{key}", f"no node {n!r} in the layer", "first|second, nodes of "
                              "the layer: " + ", ".join(names))
            for b, us in self.batch_table_raw(f"pair_measures.{key}", per).items():
                if not isinstance(us, list) or len(us) != 3:
                    self.fail(f"pair_measures.{key}.{b}", f"{us!r}", "[first_us, second_us, together_us]")
                a, c, t = (self.number(f"pair_measures.{key}.{b}", x, LATENCY) for x in us)
                out.append(PairMeasure(b, first, second, a, c, t))
        return tuple(out)

    def batch_table_raw(self, key: str, v) -> dict:
        table = self.mapping(key, v)
        for b in table:
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                self.fail(key, f"batch {b!r} is not a positive integer", "{batch: ..., ...}")
        return table


@lru_cache(maxsize=8)
def _layer_names(variant: Variant) -> list[str]:
    """The layer's node names in `variant`: the same for every model and shape (all share the
    layer's structure), so the smallest model builds them."""
    return [n.name for n in build_layer(RankDims(TINY, Shape(batch=1, context=256, tp=1)), variant).nodes]


@lru_cache(maxsize=1)
def _node_names() -> list[str]:
    """Every node name the layer has in any variant."""
    names: dict[str, None] = {}
    for flags in range(1 << len(fields(Variant))):
        names.update(dict.fromkeys(_layer_names(Variant(*(bool(flags >> i & 1) for i in range(len(fields(Variant))))))))
    return list(names)


def check_profile_for(profile: DeviceProfile, layer: Layer, *, other_model: bool = False) -> None:
    """The profile can simulate `layer`: calibrated for its model (unless `other_model`: the
    user asked for another model, and node latencies are scaled to it), and, for a measured
    profile, with a latency for every node of the layer's variant."""
    where = profile.origin or profile.name
    cal = profile.provenance.shape.model
    if layer.dims.model.name != cal and not other_model:
        raise Failure(f"{where}: provenance.shape.model: profile {profile.name} was calibrated on {cal}, the "
                      f"scenario runs {layer.dims.model.name}; accepted: a profile of {layer.dims.model.name}, "
                      f"or `--model {layer.dims.model.name}` to scale {cal}'s latencies to it by bytes and FLOPs",
                      EXIT_BAD_INPUT)
    if profile.provenance.calibrated:
        missing = [n.name for n in layer.nodes if profile.latency_table(n.name, layer.variant) is None
                   and not _borrowable(profile, n.name)]
        if missing:
            raise Failure(f"{where}: node_us: measured profile {profile.name} has no latency for "
                          f"{', '.join(missing)} (variant {variant_key(layer.variant)}); accepted: a profile "
                          f"calibrated with this variant's serial layout (streamlab calibrate --measure)",
                          EXIT_BAD_INPUT)


def _borrowable(profile: DeviceProfile, name: str) -> bool:
    """A dense layer's MLP node: no MoE-layer calibration measures it; sim/shape.py scales it from
    the measured node of its op nearest its size."""
    return name in DENSE_ONLY


def _rounded(tables: dict[str, BatchTable], digits: int = 3) -> dict:
    return {n: {b: round(t, digits) for b, t in sorted(bs.items())} for n, bs in tables.items()}


def dump_profile(profile: DeviceProfile) -> str:
    """The profile as YAML, format 2 (what `load_profile` reads back)."""
    def par(p: Param) -> dict:
        out = ({"by_batch": {b: round(v, 4) for b, v in p.by_batch.items()}} if p.by_batch
               else {"value": round(p.value, 4)})
        out["source"] = p.source
        if p.spread_by_batch:
            out["spread_by_batch"] = {b: round(v, 4) for b, v in p.spread_by_batch.items()}
        elif p.spread:
            out["spread"] = round(p.spread, 4)
        return out
    prov = profile.provenance
    provenance = {"basis": prov.basis, "device": prov.device, "driver": prov.driver,
                  "versions": dict(prov.versions), "date": prov.date, "command": prov.command,
                  "shape": vars(prov.shape), "batches": list(prov.batches),
                  "kernel_hash": prov.kernel_hash, "stale": prov.stale}
    if prov.settings:
        provenance["settings"] = dict(prov.settings)
    if prov.stages:
        provenance["stages"] = {k: round(v, 1) for k, v in prov.stages.items()}
    if prov.added:
        provenance["added"] = [{"date": a.date, "command": a.command, "scenarios": list(a.scenarios),
                                "pairs": list(a.pairs), "seconds": round(a.seconds, 1)} for a in prov.added]
    doc = {
        "format": FORMAT, "name": profile.name, "streams": profile.streams, "hip_queues": profile.hip_queues,
        **({"hip_source": profile.hip_source} if profile.hip_source else {}),
        "ar_scope": profile.ar_scope, "hardware": profile.hardware,
        "provenance": provenance,
        **{k: par(getattr(profile, k)) for k in PARAMS if getattr(profile, k) != UNMODELLED},
        "op_overhead_us": {k: par(v) for k, v in profile.op_overhead_us.items()},
        "op_efficiency": {k: par(v) for k, v in profile.op_efficiency.items()},
        "node_source": profile.node_source,
        "node_us": _rounded(profile.node_us),
        "node_kernels": profile.node_kernels,
    }
    if profile.variant_node_us:
        doc["variant_source"] = profile.variant_source
        doc["variant_node_us"] = {v: _rounded(t) for v, t in profile.variant_node_us.items()}
    if profile.pair_measures:
        doc["pair_source"] = profile.pair_source
        doc["pair_variant"] = dict(profile.pair_variant)
        pairs: dict[str, dict] = {}
        for p in sorted(profile.pair_measures, key=lambda p: (p.key, p.batch)):
            pairs.setdefault(p.key, {})[p.batch] = [round(p.first_us, 4), round(p.second_us, 4),
                                                    round(p.together_us, 4)]
        doc["pair_measures"] = pairs
    if profile.sm_demand:
        doc["sm_source"] = profile.sm_source
        doc["sm_demand"] = _rounded(profile.sm_demand)
    if profile.reference:
        doc["reference"] = profile.reference
    return yaml.safe_dump(doc, sort_keys=False, width=120)
