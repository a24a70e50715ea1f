"""Depth-independent plan cost: measure shallow copies of the model and extend to its depth.

A fake-tensor step costs what its operators cost, so a plan's time grows with the number of
layers; its memory does not need them all. The layers of a stack repeat: every decoder layer of
a uniform model holds the same weights, gradients, optimizer state and saved activations, and
each phase's peak (forward/backward, optimizer step, evaluation) is affine in the number of
repeating units. So the plan runs two copies, one unit apart (the same config with fewer
layers), and extends every measured number linearly to the real depth.

A stack's unit is the shortest period of its layers' signatures: the config's per-layer lists
(`layer_types`: sliding/full attention as in Gemma 2/3), its per-layer index lists
(`mlp_only_layers`, a vision tower's `fullatt_block_indexes`), MoE every k layers
(`decoder_sparse_step`), and each layer's own modules and parameter shapes. A depth of
q units and r more layers is measured at 1 unit + r and 2 units + r. A unit made of runs of
alike layers (a Qwen2.5-VL tower: 7 window-attention blocks, then a full-attention one) is
measured by kind instead: one layer of each run (+ r), then that copy with one more layer of
one run, for each run in turn, and each kind extended to its own count; so a copy holds a few
layers of the unit, not all of it. That needs the kinds to come from the config's per-layer
and index lists (a copy is a selection of the original layers, its lists selected alike), not
from a rule on the position (`decoder_sparse_step`). Terms the real depth holds equally often
(Qwen2.5-VL-7B: 27 more text layers, 27 more window blocks) are measured in one copy, the
extension needing only their sum. Where the layers do not repeat, or the copies would cost as
much as the model, the plan runs at full depth and says why. A vision tower is extended with
the text stack only where its blocks' kind comes from the config (Qwen2-VL/2.5-VL `depth`);
other towers (CLIP, SigLIP) stay whole in every copy.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

from .measure import CandidateMeasure, EvalPoint, TrainPoint

# Per-layer index lists a config may hold (layers that differ from the others).
INDEX_LISTS = ("mlp_only_layers", "fullatt_block_indexes", "deepstack_visual_indexes", "full_attn_idxs",
               "cross_attention_layers", "sliding_window_layers", "global_attn_layers")
# Attributes that say how a layer behaves without showing in its parameters.
LAYER_ATTRIBUTES = ("attention_type", "is_sliding", "sliding_window", "layer_type", "use_rope", "is_causal")
# Configs whose per-layer rules are not read here: the plan runs at full depth.
UNREAD_RULES = ("first_k_dense_replace", "moe_layer_freq", "interleave_moe_layer_step", "moe_layer_start_index",
                "no_rope_layer_interval", "attn_layer_period", "hybrid_override_pattern")


@dataclass
class Stack:
    """One repeating stack of a config: which config, its depth key, the unit and remainder, and
    where its unit is measured by kind, the lengths of the unit's runs of alike layers."""

    config: object  # the sub-config (text_config, vision_config or the config itself)
    key: str  # num_hidden_layers | depth
    depth: int
    unit: int
    rest: int
    runs: tuple[int, ...] = ()  # by kind: the unit's runs of alike layers, in order; () measures whole units

    @property
    def units(self) -> int:
        return (self.depth - self.rest) // self.unit

    def terms(self) -> list[int]:
        """How many times the real stack holds each term a longer copy adds: whole units, the
        unit units - 1 times; by kind, one layer of run j units x len(run j) - 1 times."""
        return [self.units * length - 1 for length in self.runs] if self.runs else [self.units - 1]

    def layers(self, more: set[int]) -> list[int]:
        """The original layers a copy keeps: the base (1 unit + rest; by kind, the first layer of
        each run + rest), with one more of each term in `more` (the unit again; run j's layer twice)."""
        tail = list(range(self.units * self.unit, self.depth))
        if not self.runs:
            return list(range(self.unit * (2 if more else 1))) + tail
        starts = [sum(self.runs[:j]) for j in range(len(self.runs))]
        return [start for j, start in enumerate(starts) for _ in range(2 if j in more else 1)] + tail


@dataclass
class DepthChoice:
    """How a plan covers the model's depth: `stacks` extended, or full depth with the reason."""

    stacks: list[Stack] = field(default_factory=list)
    reason: str | None = None  # why full depth

    @property
    def extended(self) -> bool:
        return bool(self.stacks)

    def parts(self) -> list[list[list[int]]]:
        """Each shallow copy as the original layers it keeps, per stack: the base copy (every
        stack at its base), then one copy per group of terms the real depth holds equally often
        (`repeats()`), with one more of each term of the group (Qwen2.5-VL-7B: a text layer and
        a window block 27 times more, in one copy), the other stacks at base."""
        return [[s.layers(set()) for s in self.stacks]] + [
            [s.layers({term for where, term in members if where == i}) for i, s in enumerate(self.stacks)]
            for members in self._groups().values()]

    def repeats(self) -> list[int]:
        """How many times the real depth holds what each copy after the base adds to it."""
        return list(self._groups())

    def _groups(self) -> dict[int, list[tuple[int, int]]]:
        """Terms (stack, term) by how many times the real depth holds them; terms held equally
        often are measured together: the extension only needs their sum."""
        groups: dict[int, list[tuple[int, int]]] = {}
        for i, stack in enumerate(self.stacks):
            for term, times in enumerate(stack.terms()):
                groups.setdefault(times, []).append((i, term))
        return groups

    def extend(self, *values: float) -> float:
        """A number at the real depth from its value in each copy (`parts()` order)."""
        base = values[0]
        return base + sum(times * (v - base) for times, v in zip(self._repeats, values[1:]))

    @functools.cached_property
    def _repeats(self) -> list[int]:  # extend runs for every batch a search predicts
        return self.repeats()

    def note(self) -> str:
        if not self.extended:
            return f"measured at full depth: {self.reason}"
        parts = [f"{s.depth} layers as {s.units} units of {s.unit}" + (f" + {s.rest}" if s.rest else "")
                 + (f", each kind extended apart (runs of {', '.join(map(str, s.runs))} alike layers)" if s.runs else "")
                 for s in self.stacks]
        how = ("1 and 2 units per stack" if not any(s.runs for s in self.stacks)
               else "1 and 2 units per stack, or one layer of each kind and one more of each in turn")
        if len(self.repeats()) < sum(len(s.terms()) for s in self.stacks):
            how += "; what the depth holds as often, in one copy"
        return f"measured on shallow copies ({how}), extended to " + "; ".join(parts)


def _config_signatures(config, depth: int) -> list[tuple]:
    """Each layer's kind as the config states it."""
    values = vars(config)
    if any(values.get(rule) for rule in UNREAD_RULES):
        raise _Unread(next(rule for rule in UNREAD_RULES if values.get(rule)))
    per_layer = [k for k, v in values.items() if isinstance(v, (list, tuple)) and len(v) == depth and k not in INDEX_LISTS]
    index_lists = [k for k in INDEX_LISTS if isinstance(values.get(k), (list, tuple))]
    step = _sparse_step(values)
    return [tuple(values[k][i] for k in per_layer) + tuple(i in values[k] for k in index_lists)
            + ((((i + 1) % step) == 0,) if step else ()) for i in range(depth)]


def _sparse_step(values: dict) -> int | None:
    """MoE every k layers (k > 1): a layer's kind set by its position, not by a list."""
    step = values.get("decoder_sparse_step") if values.get("num_experts") or values.get("num_local_experts") else None
    return step if step and step > 1 else None


def _run_lengths(signatures: list) -> list[int]:
    runs: list[int] = []
    for i, signature in enumerate(signatures):
        if i and signature == signatures[i - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


def _runs(signatures: list, config_signatures: list, unit: int, config) -> tuple[int, ...]:
    """The unit's runs of alike layers, where measuring by kind is sound: some run is longer
    than one layer, and the config's lists alone tell the runs apart (a shallow copy selects
    from those lists; a kind set by a rule on the position, or seen only in the modules, would
    not follow the selection). Else () and the stack is measured in whole units."""
    runs = _run_lengths(signatures[:unit])
    if max(runs) == 1 or _sparse_step(vars(config)) or _run_lengths(config_signatures[:unit]) != runs:
        return ()
    return tuple(runs)


class _Unread(Exception):
    pass


def module_signature(layer) -> tuple:
    """A layer's modules, behaviour flags and parameter shapes (what makes two layers cost alike)."""
    modules = tuple((name, type(m).__name__, tuple(getattr(m, a, None) for a in LAYER_ATTRIBUTES)) for name, m in layer.named_modules())
    params = tuple((name, tuple(p.shape), str(p.dtype), p.requires_grad) for name, p in layer.named_parameters())
    return modules, params


def _period(signatures: list) -> tuple[int, int] | None:
    """(unit, rest): the shortest period p with signatures[i] == signatures[i % p]; rest = depth mod p."""
    depth = len(signatures)
    for p in range(1, depth // 3 + 1):  # at least 3 units: 1 and 2 units measured, one extended
        if all(signatures[i] == signatures[i % p] for i in range(depth)):
            return p, depth % p
    return None


def _stacks(config) -> list[tuple[object, str]]:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    found = [(text, "num_hidden_layers")] if isinstance(getattr(text, "num_hidden_layers", None), int) else []
    vision = getattr(config, "vision_config", None)
    if vision is not None and isinstance(getattr(vision, "depth", None), int):
        found.append((vision, "depth"))
    return found


def _layer_lists(model) -> dict[int, list]:
    """The model's ModuleLists of repeated layers, by length (the decoder layers, tower blocks)."""
    import torch

    lists: dict[int, list] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1:
            lists.setdefault(len(module), []).append(module)
    return lists


def choose_depth(config, model) -> DepthChoice:
    """The stacks to extend, from the config and the full model built on the meta device."""
    try:
        candidates = _stacks(config)
        if not candidates:
            return DepthChoice(reason="no decoder-layer count in the config")
        lists = _layer_lists(model)
        stacks = []
        for sub, key in candidates:
            depth = getattr(sub, key)
            layers = [m for m in lists.get(depth, []) if len({type(x).__name__ for x in m}) == 1
                      and ("Decoder" in type(m[0]).__name__) == (key == "num_hidden_layers")]
            signatures = stated = _config_signatures(sub, depth)
            if len(layers) == 1:
                signatures = [s + module_signature(layer) for s, layer in zip(stated, layers[0])]
            elif key == "num_hidden_layers":
                return DepthChoice(reason=f"the {depth} decoder layers were not found as one list of modules")
            period = _period(signatures)
            if period is None:
                if key == "num_hidden_layers":
                    return DepthChoice(reason=f"the {depth} decoder layers do not repeat in a unit of at most a third of them")
                continue  # a tower that does not repeat stays whole in every copy
            stacks.append(Stack(sub, key, depth, *period, runs=_runs(signatures, stated, period[0], sub)))
    except _Unread as rule:
        return DepthChoice(reason=f"the config's per-layer rule {rule} is not read by the plan")
    if not stacks:
        return DepthChoice(reason="no stack of layers repeats")
    choice = DepthChoice(stacks=stacks)
    if sum(len(layers) for part in choice.parts() for layers in part) >= sum(s.depth for s in stacks):
        return DepthChoice(reason="the model is shallow: shallow copies would cost as much as the model")
    return choice


def shallow_config(config, choice: DepthChoice, part: int = 0):
    """A copy of the config whose extended stacks keep the original layers of `choice.parts()[part]`:
    per-layer lists selected alike, index lists the positions of the kept layers they held."""
    shallow = copy.deepcopy(config)
    kept = dict(zip(map(id, (s.config for s in choice.stacks)), choice.parts()[part]))
    for (original, key), (sub, _) in zip(_stacks(config), _stacks(shallow)):
        layers = kept.get(id(original))
        if layers is None:
            continue
        depth = getattr(original, key)
        for name, value in list(vars(sub).items()):
            if name in INDEX_LISTS and isinstance(value, (list, tuple)):
                setattr(sub, name, type(value)(i for i, layer in enumerate(layers) if layer in value))
            elif isinstance(value, (list, tuple)) and len(value) == depth:
                setattr(sub, name, type(value)(value[layer] for layer in layers))
        setattr(sub, key, len(layers))
    return shallow


class DepthExtended:
    """CandidateSteps' interface over shallow copies (`DepthChoice.parts()`): every number is
    parts[0] + sum over the longer copies of (part i - parts[0]) x the times the real depth
    holds what part i adds (`DepthChoice.repeats()`)."""

    def __init__(self, parts: list, choice: DepthChoice, result: CandidateMeasure):
        self.parts, self.choice, self.result = parts, choice, result
        self.extend = choice.extend
        result.weights = round(self.extend(*(part.result.weights for part in parts)))  # the whole model stays on meta
        self.train_points: dict[int, TrainPoint] = {}
        self.eval_points: dict[tuple, EvalPoint] = {}

    def train(self, batch: int) -> TrainPoint:
        if batch not in self.train_points:
            points = [part.train(batch) for part in self.parts]
            fb = self.extend(*(p.forward_backward for p in points))
            step = self.extend(*(p.step for p in points))
            point = TrainPoint(round(max(fb, step)), round(fb), round(step), [], 0, round(self.extend(*(p.rollout for p in points))))
            self.train_points[batch] = point
            r, measures = self.result, [part.result for part in self.parts]
            r.train_peaks[batch], r.forward_backward_peaks[batch], r.step_peaks[batch] = point.peak, point.forward_backward, point.step
            for name in ("gradients", "optimizer_state", "step_transient", "logits_per_sample"):
                setattr(r, name, round(self.extend(*(getattr(m, name) for m in measures))))
        return self.train_points[batch]

    def eval(self, train_batch: int, accumulation: int, batch: int) -> EvalPoint:
        key = (train_batch, accumulation, batch)
        if key not in self.eval_points:
            points = [part.eval(*key) for part in self.parts]
            point = EvalPoint(round(self.extend(*(p.peak for p in points))), [], round(self.extend(*(p.rollout for p in points))))
            self.eval_points[key] = point
            if self.result.eval_after in (None, f"{train_batch}x{accumulation}"):
                self.result.eval_after = f"{train_batch}x{accumulation}"
                self.result.eval_peaks[batch] = point.peak
        return self.eval_points[key]

    def close(self) -> None:
        for part in self.parts:
            part.close()
