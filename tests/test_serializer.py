"""The client's cache of serialized functions: functions pickled by reference, and
only those."""

from __future__ import annotations

import functools
import os
import pickle
import sys
import types

import cloudpickle
import pytest
from hypothesis import given
from hypothesis import strategies as st

from futurefsm.scheduler_stub import sample_tasks
from futurefsm.serializer import (
    DEFAULT_SERIALIZER,
    OUT_OF_BAND_BYTES,
    CloudpickleSerializer,
    DumpedFunctions,
    PickleSerializer,
    dumps_buffers,
    is_pickled_by_reference,
    is_plain,
    loads_buffers,
)


class CountingSerializer:
    """A serializer that counts its calls (cloudpickle inside)."""

    def __init__(self) -> None:
        self.dumped = 0

    def dumps(self, obj):
        self.dumped += 1
        return cloudpickle.dumps(obj)

    def loads(self, data):
        return cloudpickle.loads(data)


def _closure():
    seen = []

    def remember(value):
        seen.append(value)
        return len(seen)

    return remember


def test_module_level_functions_classes_and_builtins_are_pickled_by_reference():
    for obj in (sample_tasks.noop, abs, int, sample_tasks.add):
        for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
            assert is_pickled_by_reference(pickle.dumps(obj, protocol=protocol)), (obj, protocol)
        assert is_pickled_by_reference(cloudpickle.dumps(obj)), obj


def test_by_value_and_composite_pickles_are_not_by_reference():
    by_value = (
        lambda: 1,
        _closure(),
        functools.partial(sample_tasks.add, 1),
        CountingSerializer().dumps,  # a bound method: the instance goes by value
    )
    for obj in by_value:
        assert not is_pickled_by_reference(cloudpickle.dumps(obj)), obj
    for data in (b"", b"\x80", pickle.dumps(1), pickle.dumps((abs,)), pickle.dumps(abs) + b"."):
        assert not is_pickled_by_reference(data), data


@given(st.binary(max_size=80))
def test_any_bytes_give_an_answer_never_an_error(data):
    assert is_pickled_by_reference(data) in (True, False)


def test_a_module_function_is_serialized_once():
    serializer = CountingSerializer()
    cache = DumpedFunctions(serializer)
    first = cache.dumps(sample_tasks.noop)
    assert cache.dumps(sample_tasks.noop) is first
    assert serializer.dumped == 1
    assert cloudpickle.loads(first) is sample_tasks.noop


def test_closures_lambdas_and_partials_are_serialized_every_time():
    serializer = CountingSerializer()
    cache = DumpedFunctions(serializer)
    for fn in (_closure(), lambda: 1, functools.partial(sample_tasks.add, 1)):
        cache.dumps(fn)
        cache.dumps(fn)
    assert serializer.dumped == 6


def test_a_function_whose_name_now_means_something_else_is_serialized_again():
    module = types.ModuleType("futurefsm_test_rebinding")
    exec("def task():\n    return 'old'\n", vars(module))
    sys.modules[module.__name__] = module
    try:
        serializer = CountingSerializer()
        cache = DumpedFunctions(serializer)
        old = module.task
        cache.dumps(old)
        exec("def task():\n    return 'new'\n", vars(module))
        # By reference, the old bytes would now run the new function: not reused.
        data = cache.dumps(old)
        assert serializer.dumped == 2
        assert cloudpickle.loads(data)() == "old"  # cloudpickle sent it by value
    finally:
        del sys.modules[module.__name__]


def test_unhashable_callables_are_serialized_every_time():
    class Unhashable:
        __hash__ = None

        def __call__(self):
            return 1

    serializer = CountingSerializer()
    cache = DumpedFunctions(serializer)
    cache.dumps(Unhashable())
    cache.dumps(Unhashable())
    assert serializer.dumped == 2


def test_the_cache_is_bounded():
    cache = DumpedFunctions(PickleSerializer(), limit=2)
    for fn in (abs, int, str, len, sample_tasks.noop):
        cache.dumps(fn)
    assert len(cache._dumped) <= 2


# -- is_plain: plain data skips cloudpickle's pickler


class _Int(int):
    """An int subclass: not plain (its class would need pickling)."""


plain_data = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=20,
)


@given(plain_data)
def test_plain_data_pickles_as_cloudpickle_would(value):
    assert is_plain(value)
    data = CloudpickleSerializer().dumps(value)
    assert pickle.loads(data) == value
    assert data == cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def test_anything_but_plain_data_goes_to_cloudpickle():
    def local(x):
        return x + 1

    not_plain = [
        (local,),
        ((lambda: 1),),
        {"key": sample_tasks.noop},
        [1, _Int(2)],
        ((), {"n": range(3)}),
        list(range(100)),  # too many to look through
    ]
    for value in not_plain:
        assert not is_plain(value), value
    loaded = pickle.loads(CloudpickleSerializer().dumps(((local,), {})))
    assert loaded[0][0](1) == 2  # by value, as cloudpickle sends it
    looped: list[object] = []
    looped.append(looped)
    assert not is_plain(looped)  # a cycle ends when the budget does


@pytest.mark.parametrize("serializer", [CloudpickleSerializer(), PickleSerializer()])
def test_large_bytes_travel_out_of_band_once_each_and_come_back_as_bytes(serializer):
    big = os.urandom(OUT_OF_BAND_BYTES)
    other = os.urandom(OUT_OF_BAND_BYTES + 1)
    small = b"s" * (OUT_OF_BAND_BYTES - 1)
    value = ((big, 1, [big, small], other), {"k": big})
    data, buffers = dumps_buffers(serializer, value)
    # Each large object once, by identity, in the order met; none of it in the pickle.
    assert [id(b) for b in buffers] == [id(big), id(other)]
    assert len(data) < len(small) + 1000
    # Frames arrive as buffers (zero-copy memoryviews): they come back as bytes, one
    # object per buffer, wherever it was referenced.
    loaded = loads_buffers(serializer, data, [memoryview(b) for b in buffers])
    assert loaded == value
    args, kwargs = loaded
    assert type(args[0]) is bytes and args[0] is args[2][0] is kwargs["k"]


def test_out_of_band_bytes_reach_a_closure_by_value_too():
    big = os.urandom(OUT_OF_BAND_BYTES)

    def local():
        return len(big)

    data, buffers = dumps_buffers(DEFAULT_SERIALIZER, ((local, big), {}))
    assert [id(b) for b in buffers] == [id(big)]
    (fn, arg), _ = loads_buffers(DEFAULT_SERIALIZER, data, buffers)
    assert fn() == OUT_OF_BAND_BYTES and arg is buffers[0]


def test_small_arguments_stay_in_band():
    for value in [((), {}), ((b"x" * 1000, "s"), {}), ((_Int(3),), {})]:
        data, buffers = dumps_buffers(DEFAULT_SERIALIZER, value)
        assert buffers == ()
        assert data == DEFAULT_SERIALIZER.dumps(value)


def test_buffers_that_do_not_match_the_pickle_are_refused_naming_them():
    big, other = os.urandom(OUT_OF_BAND_BYTES), os.urandom(OUT_OF_BAND_BYTES)
    data, buffers = dumps_buffers(DEFAULT_SERIALIZER, ((big, other), {}))
    with pytest.raises(pickle.UnpicklingError, match="out-of-band buffer 1: the task came with 1"):
        DEFAULT_SERIALIZER.loads_buffers(data, buffers[:1])
    with pytest.raises(pickle.UnpicklingError, match="persistent"):
        DEFAULT_SERIALIZER.loads_buffers(data, [])

    class Plain:
        def dumps(self, obj):
            return pickle.dumps(obj)

        def loads(self, data):
            return pickle.loads(data)

    plain = Plain()
    assert dumps_buffers(plain, ((big,), {}))[1] == ()  # no dumps_buffers: in band
    with pytest.raises(TypeError, match="2 out-of-band buffers came with the data"):
        loads_buffers(plain, data, buffers)
