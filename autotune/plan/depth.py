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

A tower measured by kind leaves its longest run out of the base copy (`Stack.absent`: a
Qwen2.5-VL tower's window-attention blocks, whose SDPA path loops in Python over 80 windows
per image, so every copy holding one pays for it): one copy holds one such block, and its
other blocks are counted as the kind with the same parameters adds one (`Stack.reference`,
the full-attention block, measured from one to two). That is sound while both kinds hold the
same bytes at each phase's peak (with checkpointing, their checkpointed input), so the peak
sits in neither block's own moments; `DepthChoice.check` tests it at every step (the first
window block's increment against the second full block's) and the plan falls back to one
layer of each kind in every copy (`DepthChoice.fallback`) where it fails, saying so.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass, field

# Per-layer index lists a config may hold (layers that differ from the others).
INDEX_LISTS = ("mlp_only_layers", "fullatt_block_indexes", "deepstack_visual_indexes", "full_attn_idxs",
               "cross_attention_layers", "sliding_window_layers", "global_attn_layers")
# Attributes that say how a layer behaves without showing in its parameters.
LAYER_ATTRIBUTES = ("attention_type", "is_sliding", "sliding_window", "layer_type", "use_rope", "is_causal")
# Configs whose per-layer rules are not read here: the plan runs at full depth.
UNREAD_RULES = ("first_k_dense_replace", "moe_layer_freq", "interleave_moe_layer_step", "moe_layer_start_index",
                "no_rope_layer_interval", "attn_layer_period", "hybrid_override_pattern")
# The error a base copy without a kind may admit (`DepthChoice.check`), as a share of the number
# it extends: its one-offs (a tensor all blocks of the kind share, held once) are bytes where
# a block's own moments are megabytes.
CHECK_SHARE = 0.001


class Unsound(Exception):
    """The base copy without a kind cannot be extended here (DepthChoice.check): the plan runs the
    fallback copies instead; the message says where the two kinds' increments parted."""


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
    absent: int | None = None  # by kind: the run the base copy leaves out (measured once, in a copy of its own)
    reference: int | None = None  # the run with the same parameters whose next layer stands in for the absent run's others

    @property
    def name(self) -> str:
        return "vision tower" if self.key == "depth" else "decoder stack"

    @property
    def units(self) -> int:
        return (self.depth - self.rest) // self.unit

    def terms(self) -> list[int]:
        """How many times the real stack holds each term a longer copy adds: whole units, the
        unit units - 1 times; by kind, one layer of run j units x len(run j) - 1 times. With a run
        absent from the base: its first layer once, its others as many more of the reference run."""
        if not self.runs:
            return [self.units - 1]
        times = [self.units * length - 1 for length in self.runs]
        if self.absent is not None:
            times[self.reference] += times[self.absent]
            times[self.absent] = 1
        return times

    def checked(self) -> tuple[int, ...]:
        """The terms `DepthChoice.check` compares (absent, reference), each measured in a copy of its own."""
        return () if self.absent is None else (self.absent, self.reference)

    def layers(self, more: set[int]) -> list[int]:
        """The original layers a copy keeps: the base (1 unit + rest; by kind, the first layer of
        each run, none of the absent run's, + rest), with one more of each term in `more` (the
        unit again; run j's layer once more)."""
        tail = list(range(self.units * self.unit, self.depth))
        if not self.runs:
            return list(range(self.unit * (2 if more else 1))) + tail
        starts = [sum(self.runs[:j]) for j in range(len(self.runs))]
        return [start for j, start in enumerate(starts)
                for _ in range((j != self.absent) + (j in more))] + tail


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
        (`repeats()`), with one more of each term of the group (Qwen2.5-VL-7B: a text layer
        27 times more; a window block once; a full block 30 times more), the other stacks at base."""
        return [[s.layers(set()) for s in self.stacks]] + [
            [s.layers({term for where, term in members if where == i}) for i, s in enumerate(self.stacks)]
            for _, members in self._groups()]

    def repeats(self) -> list[int]:
        """How many times the real depth holds what each copy after the base adds to it."""
        return [times for times, _ in self._groups()]

    def _groups(self) -> list[tuple[int, list[tuple[int, int]]]]:
        """(times, terms (stack, term)) in copy order: terms held equally often are measured
        together (the extension only needs their sum), but the terms `check` compares each alone."""
        groups: list[tuple[int, list[tuple[int, int]]]] = []
        shared: dict[int, list[tuple[int, int]]] = {}
        for i, stack in enumerate(self.stacks):
            for term, times in enumerate(stack.terms()):
                if term in stack.checked():
                    groups.append((times, [(i, term)]))
                    continue
                if times not in shared:
                    shared[times] = []
                    groups.append((times, shared[times]))
                shared[times].append((i, term))
        return groups

    @property
    def lean(self) -> bool:
        """Some stack's base copy leaves a kind out (`Stack.absent`): `check` guards the extension."""
        return any(s.absent is not None for s in self.stacks)

    def fallback(self) -> "DepthChoice":
        """The same stacks with one layer of each kind in every copy: where `check` fails."""
        return DepthChoice(stacks=[dataclasses.replace(s, absent=None, reference=None) for s in self.stacks])

    def check(self, what: str, *values: float) -> None:
        """Raise Unsound where the extension of `values` (parts() order) from a base without a kind
        cannot be trusted: the first layer of the absent kind must add what one more layer of the
        reference kind adds, up to CHECK_SHARE of the extended number over the absent kind's other
        layers. A peak inside a layer's own moments (its transient in the forward, the
        recompute or the backward) would differ by that transient; the extension would count it
        for every layer of the kind."""
        copy_of = {term: k + 1 for k, (_, members) in enumerate(self._groups()) for term in members}
        for i, stack in enumerate(self.stacks):
            if stack.absent is None:
                continue
            absent, reference = (values[copy_of[(i, term)]] - values[0] for term in stack.checked())
            others = stack.units * stack.runs[stack.absent] - 1
            if others * abs(absent - reference) > CHECK_SHARE * abs(self.extend(*values)):
                first = sum(stack.runs[:stack.absent])
                second = sum(stack.runs[:stack.reference])
                raise Unsound(f"{what}: the {stack.name}'s layer {first} (a kind the base copy leaves out) added "
                              f"{round(absent)} bytes, one more of its layer {second} (the same parameters) {round(reference)}")

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
        for s in self.stacks:
            if s.absent is not None:
                how += (f"; the {s.name}'s base without its run of {s.runs[s.absent]}: one such layer in a copy of its "
                        f"own, the others as one more of the run of {s.runs[s.reference]} adds (the same parameters), "
                        "checked at every step")
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
            stack = Stack(sub, key, depth, *period, runs=_runs(signatures, stated, period[0], sub))
            if key == "depth" and len(layers) == 1:
                stack.absent, stack.reference = _left_out(stack, layers[0])
            stacks.append(stack)
    except _Unread as rule:
        return DepthChoice(reason=f"the config's per-layer rule {rule} is not read by the plan")
    if not stacks:
        return DepthChoice(reason="no stack of layers repeats")
    choice = DepthChoice(stacks=stacks)
    if choice.lean and _copied(choice) >= sum(s.depth for s in stacks):
        choice = choice.fallback()
    if _copied(choice) >= sum(s.depth for s in stacks):
        return DepthChoice(reason="the model is shallow: shallow copies would cost as much as the model")
    return choice


def _copied(choice: DepthChoice) -> int:
    """The layers the copies hold between them (what the plan's steps cost, roughly)."""
    return sum(len(layers) for part in choice.parts() for layers in part)


def _left_out(stack: Stack, layers) -> tuple[int | None, int | None]:
    """(the run a tower's base copy leaves out, the run standing in for its layers) or (None, None).
    A tower only: its longest run (Qwen2.5-VL's window blocks, whose SDPA path loops over the
    windows in Python) costs every copy that holds one; a text stack's kinds cost alike, and one
    more copy would cost more than it saves. The stand-in has the same parameters."""
    runs = stack.runs
    if len(runs) < 2 or max(runs) < 2:
        return None, None
    absent = runs.index(max(runs))
    params = [module_signature(layers[sum(runs[:j])])[1] for j in range(len(runs))]
    reference = next((j for j in range(len(runs)) if j != absent and params[j] == params[absent]), None)
    return (absent, reference) if reference is not None else (None, None)


def shallow_config(config, choice: DepthChoice, kept: list[list[int]]):
    """A copy of the config whose extended stacks keep the original layers `kept` (one of
    `choice.parts()`): per-layer lists selected alike, index lists the positions of the kept
    layers they held."""
    shallow = copy.deepcopy(config)
    kept = dict(zip(map(id, (s.config for s in choice.stacks)), kept))
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
