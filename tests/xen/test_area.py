"""The shared area's layout keys: what the frontend publishes, the INS accepts, and nothing else."""
import pytest
from hypothesis import given, settings, strategies as st

from mwcomms.xen.area import (AreaLayout, LayoutError, PAGE, directory_bytes, parse_directory)

layouts = st.builds(
    AreaLayout,
    cmd_ring_pages=st.sampled_from([1, 2, 4, 8, 16]),
    evq_pages=st.sampled_from([1, 2, 4, 64]),
    sock_slots=st.sampled_from([32, 64, 1024, 65536]),
    data_pages=st.integers(1, 1 << 18),
)


@settings(max_examples=1000, deadline=None)
@given(layouts)
def test_keys_round_trip_and_parts_do_not_overlap(layout):
    assert AreaLayout.from_keys(layout.to_keys()) == layout
    parts = [(0, 1), (layout.cmd_off, layout.cmd_ring_pages), (layout.fq_off, layout.evq_pages),
             (layout.bq_off, layout.evq_pages), (layout.socks_off, layout.sock_pages),
             (layout.data_off, layout.data_pages)]
    end = 0
    for start, length in parts:
        assert start == end and length > 0
        end = start + length
    assert end == layout.area_pages
    assert layout.cmd_slots & (layout.cmd_slots - 1) == 0
    assert layout.ref_pages * 1024 >= layout.area_pages > (layout.ref_pages - 1) * 1024


@pytest.mark.parametrize("key,value", [
    ("cmd-ring-pages", "3"), ("cmd-ring-pages", "32"), ("cmd-ring-pages", "0"),
    ("evq-pages", "128"), ("sock-slots", "16"), ("sock-slots", "1000"),
    ("sock-slots", "131072"), ("data-pages", "0"), ("data-pages", str((1 << 18) + 1)),
    ("data-pages", "-1"), ("data-pages", "1e3"), ("data-pages", " 4"), ("data-pages", "99999999999"),
    ("area-pages", "1"),
])
def test_bad_keys_are_refused(key, value):
    keys = AreaLayout().to_keys()
    keys[key] = value
    with pytest.raises(LayoutError):
        AreaLayout.from_keys(keys)


@pytest.mark.parametrize("missing", ["cmd-ring-pages", "evq-pages", "sock-slots", "data-pages", "area-pages"])
def test_missing_keys_are_refused(missing):
    keys = AreaLayout().to_keys()
    del keys[missing]
    with pytest.raises(LayoutError, match=missing):
        AreaLayout.from_keys(keys)


def test_area_larger_than_the_ins_allows_is_refused():
    layout = AreaLayout(data_pages=10000)
    with pytest.raises(LayoutError, match="exceeds"):
        AreaLayout.from_keys(layout.to_keys(), max_area_pages=layout.area_pages - 1)
    assert AreaLayout.from_keys(layout.to_keys(), max_area_pages=layout.area_pages) == layout


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3000))
def test_directory_round_trip(refs):
    raw = directory_bytes(refs)
    assert len(raw) % PAGE == 0
    assert parse_directory(raw, len(refs)) == refs
    with pytest.raises(LayoutError):
        parse_directory(raw[: 4 * len(refs) - 1], len(refs))


def test_more_sockets_than_the_ins_allows_is_refused():
    layout = AreaLayout(sock_slots=2048)
    with pytest.raises(LayoutError, match="sock-slots"):
        AreaLayout.from_keys(layout.to_keys(), max_sock_slots=1024)
    assert AreaLayout.from_keys(layout.to_keys(), max_sock_slots=2048) == layout
