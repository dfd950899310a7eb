"""mwcommsd on Xen makes room for its area in gntalloc's limit (a module parameter, 1024 pages
by default) or says what to do; here against a stand-in file for the parameter."""
import errno

import pytest

from mwcomms.daemon import XEN_LAYOUT, ensure_gntalloc_room


def test_default_xen_area_needs_more_than_the_default_limit():
    assert XEN_LAYOUT.area_pages + XEN_LAYOUT.ref_pages > 1024


def test_low_limit_is_raised(tmp_path):
    limit = tmp_path / "limit"
    limit.write_text("1024\n")
    ensure_gntalloc_room(8246, str(limit))
    assert int(limit.read_text()) >= 8246


def test_high_enough_limit_is_left_alone(tmp_path):
    limit = tmp_path / "limit"
    limit.write_text("65536\n")
    ensure_gntalloc_room(8246, str(limit))
    assert limit.read_text() == "65536\n"


def test_no_parameter_is_no_error(tmp_path):
    ensure_gntalloc_room(8246, str(tmp_path / "absent"))


def test_limit_that_cannot_be_raised_names_the_parameter():
    """A read-only kernel attribute holding a number stands in for a parameter we may not
    write (root included)."""
    ro = "/sys/devices/system/cpu/kernel_max"
    try:
        with open(ro) as f:
            value = int(f.read())
    except (OSError, ValueError):
        pytest.skip("no %s here" % ro)
    with pytest.raises(OSError) as info:
        ensure_gntalloc_room(value + 1, ro)
    assert info.value.errno == errno.ENOSPC
    assert ro in str(info.value) and "--data-pages" in str(info.value)
