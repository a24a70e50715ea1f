"""Known values for the small tensors of a plan, so that data-dependent code runs under fake
tensors.

Fake tensors carry shapes, not values, so any operator whose result depends on values stops a
plan: `.tolist()` of Qwen2-VL's image grid, `.item()` in LLaVA's image-token check, `nonzero`,
indexing with a boolean mask. Those values all come from small tensors the step builds itself
(token ids, masks, grids, positions), never from the weights. This mode runs every operator on
fake tensors as usual and, when all its tensor inputs have known values, also on real copies of
those values: the fake result keeps the memory accounting exact, the real one answers what
the code asks. An operator that fake tensors cannot run (a data-dependent output) is answered
from the real result; a boolean mask over a weight-sized tensor is replaced by the positions
it selects, which is what PyTorch's own indexing does with it.

Values are kept only for tensors up to `INT_LIMIT` elements (integers and booleans) or
`FLOAT_LIMIT` (floating point), so the real side stays small; anything derived from the
weights or the activations has no known value and stays purely fake.
"""

from __future__ import annotations

import contextlib
import functools
import weakref

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_unflatten

from .sim import output_tensors, uncounted

INT_LIMIT = 1 << 22  # token ids and masks: 4M elements is 32 x 128k tokens
FLOAT_LIMIT = 1 << 16  # grids, timestamps, scales; never activations
_UNKNOWN = object()
_VALUE = "_autotune_known_value"
_DATA_DEPENDENT = (DataDependentOutputException, DynamicOutputShapeException)
_INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
             torch.ops.aten._unsafe_index_put.default}
_FROM_DATA = {torch.tensor, torch.as_tensor}
# Operators that return Python values: with known inputs there is nothing to ask the fake mode.
_READS_VALUES = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
                 torch.ops.aten.equal.default}
_DEVICE = torch.ops.prim.device.default
_META = torch.device("meta")
_TO_PYTHON = {torch.Tensor.item}


def _small(tensor: torch.Tensor) -> bool:
    limit = FLOAT_LIMIT if tensor.is_floating_point() or tensor.is_complex() else INT_LIMIT
    return tensor.numel() <= limit


@functools.cache
def _written(func) -> tuple[int, ...]:
    """Positions of the arguments an operator writes to (in-place and out= operators)."""
    return tuple(i for i, a in enumerate(func._schema.arguments) if a.alias_info is not None and a.alias_info.is_write)


class KnownValues(TorchDispatchMode):
    """Sits above a `FakeTensorMode`; see the module docstring. `counter` (a sim.LiveBytes): count
    the outputs of every operator it returns here, in place of the counter's own mode above it.
    Each Python mode costs every operator a dispatch, and under fake tensors every operator asks
    its tensors' device once or twice more (prim.device); one mode fewer is ~10% of a plan."""

    def __init__(self, fake_mode, counter=None):
        super().__init__()
        self.fake_mode = fake_mode
        self.counter = counter
        # The value rides on the fake tensor itself (an attribute: the cheapest lookup, and it
        # dies with the tensor); the registry finds them again when a write makes them stale.
        self._registry: dict[int, weakref.ref] = {}

    def value(self, tensor: torch.Tensor):
        if isinstance(tensor, FakeTensor):
            return tensor.__dict__.get(_VALUE, _UNKNOWN)
        return tensor  # a real tensor handed to the fake mode (torch.tensor's lift_fresh, a constant)

    def _set(self, fake: torch.Tensor, value: torch.Tensor) -> None:
        fake.__dict__[_VALUE] = value
        key = id(fake)
        self._registry[key] = weakref.ref(fake, lambda _, key=key: self._registry.pop(key, None))

    def _all_known(self, args, kwargs) -> bool:
        # Operator arguments nest one level at most (Tensor[] and Tensor?[] lists).
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, (list, tuple)):
                if not all(self.value(a) is not _UNKNOWN for a in arg if isinstance(a, torch.Tensor)):
                    return False
            elif isinstance(arg, torch.Tensor) and self.value(arg) is _UNKNOWN:
                return False
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _DEVICE:  # asked around every operator (6 in 10 of a plan's dispatches); nothing to know
            tensor = args[0]
            if type(tensor) is FakeTensor:  # answered as FakeTensor's own handler answers it, one Python dispatch fewer
                return _META if tensor.fake_mode.in_kernel_invocation else tensor.fake_device
            return func(*args, **kwargs)
        out = self._dispatch(func, args, kwargs)
        if self.counter is not None:
            self.counter.count_outputs(out)
        return out

    def _dispatch(self, func, args, kwargs):
        known = self._all_known(args, kwargs)
        if known and func in _READS_VALUES:
            return self._answer_from_real(func, args, kwargs)
        try:
            out = func(*args, **kwargs)
        except _DATA_DEPENDENT:
            if known:
                return self._answer_from_real(func, args, kwargs)
            if func in _INDEXING:
                return self._index_by_positions(func, args, kwargs)
            raise
        if known:
            outputs = [t for t in output_tensors(out) if isinstance(t, torch.Tensor)]
            if all(_small(t) for t in outputs):
                self._remember(out, self._run_real(func, args, kwargs))
                return out
        if _written(func):
            self._forget_written(func, args, kwargs)
        return out

    def _run_real(self, func, args, kwargs):
        flat, tree = tree_flatten((args, kwargs))
        real = [self.value(x) if isinstance(x, torch.Tensor) else x for x in flat]
        real_args, real_kwargs = tree_unflatten(real, tree)
        with _disable_current_modes(), uncounted():
            return func(*real_args, **real_kwargs)

    def _remember(self, fake_out, real_out) -> None:
        for fake, value in zip(tree_flatten(fake_out)[0], tree_flatten(real_out)[0]):
            if isinstance(fake, FakeTensor) and isinstance(value, torch.Tensor):
                self._set(fake, value)

    def _answer_from_real(self, func, args, kwargs):
        """The fake mode cannot say what this operator returns; the real values can."""
        result = self._run_real(func, args, kwargs)
        by_value = {id(self.value(fake)): fake for fake in tree_flatten((args, kwargs))[0] if isinstance(fake, torch.Tensor)}
        out_flat, out_tree = tree_flatten(result)
        fakes = []
        for item in out_flat:
            if not isinstance(item, torch.Tensor):
                fakes.append(item)  # .item(), bool(), equal(): a Python value
            elif id(item) in by_value:
                fakes.append(by_value[id(item)])  # an in-place operator returns its argument
            else:
                fake = self.fake_mode.from_tensor(item.clone())
                if _small(fake):
                    self._set(fake, item)
                fakes.append(fake)
        return tree_unflatten(fakes, out_tree)

    def _index_by_positions(self, func, args, kwargs):
        """`x[mask]` on a weight-sized `x` with a known boolean `mask`: index with the mask's
        positions instead, exactly what PyTorch's indexing does with a mask."""
        tensor, indices, *rest = args
        positions = []
        for index in indices:
            if not (isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)):
                positions.append(index)
                continue
            value = self.value(index)
            if value is _UNKNOWN:
                raise DynamicOutputShapeException(func)
            with _disable_current_modes(), uncounted():  # the real mask's positions, outside the fake mode
                columns = [column.clone() for column in value.nonzero().unbind(1)]
            for column in columns:
                fake = self.fake_mode.from_tensor(column)
                self._set(fake, column)
                positions.append(fake)
        return func(tensor, positions, *rest, **kwargs)

    def _forget_written(self, func, args, kwargs) -> None:
        """An operator with an unknown input wrote into a tensor: its value, and those of the
        tensors sharing its storage, are no longer known."""
        written = [args[i] if i < len(args) else kwargs.get(func._schema.arguments[i].name) for i in _written(func)]
        storages = {t.untyped_storage()._cdata for t in written
                    if isinstance(t, torch.Tensor) and self.value(t) is not _UNKNOWN}
        if storages:
            for ref in list(self._registry.values()):
                fake = ref()
                if fake is not None and fake.untyped_storage()._cdata in storages:
                    fake.__dict__.pop(_VALUE, None)


@contextlib.contextmanager
def known_values_are_readable(known: KnownValues):
    """transformers treats every fake tensor as a graph being traced (`is_tracing`) and then
    takes the code path that never reads values: with SDPA it builds an explicit L x L mask in
    every layer instead of using `is_causal`, which the real step does not do. A fake tensor
    whose values are known can be read, so it is not tracing: the plan takes the real step's path."""
    try:
        from transformers.utils import import_utils
    except ImportError:
        yield
        return
    original = import_utils.is_fake_tensor
    import_utils.is_fake_tensor = lambda x: original(x) and known.value(x) is _UNKNOWN
    fake_tolist = FakeTensor.tolist
    FakeTensor.tolist = lambda t: (fake_tolist(t) if known.value(t) is _UNKNOWN else known.value(t).tolist())
    try:
        yield
    finally:
        import_utils.is_fake_tensor = original
        FakeTensor.tolist = fake_tolist


class KnownData(TorchFunctionMode):
    """`torch.tensor([t0, t1])` over 0-d tensors reads their memory directly, below the
    dispatcher: fake tensors have none. Give it their known values instead; and answer
    `.item()` of a known tensor at once."""

    def __init__(self, known: KnownValues):
        super().__init__()
        self.known = known

    def _plain(self, data):
        if isinstance(data, FakeTensor):
            value = self.known.value(data)
            return data if value is _UNKNOWN else value.tolist()
        if isinstance(data, (list, tuple)):
            return type(data)(self._plain(item) for item in data)
        return data

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _TO_PYTHON and isinstance(args[0], FakeTensor):
            value = self.known.value(args[0])
            if value is not _UNKNOWN:
                return func(value, *args[1:], **kwargs)
        if func in _FROM_DATA and args and isinstance(args[0], (list, tuple)):
            args = (self._plain(args[0]), *args[1:])
        return func(*args, **kwargs)
