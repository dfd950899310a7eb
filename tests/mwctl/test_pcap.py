"""tools/_pcap.py: pcap-ng written and read back (the project's own check of `trace --pcap`
files, used when tshark is missing); tshark reads the same file when installed."""
import io
import shutil
import subprocess
import tempfile

import pytest
from hypothesis import given, strategies as st

from mwcomms.tools import _pcap


def _write(tmp_path, packets, name="t.pcapng"):
    path = tmp_path / name
    with open(path, "wb") as f:
        w = _pcap.PcapNgWriter(f, _pcap.LINKTYPE_USER0, name="if0", description="test")
        for ts, data, flags in packets:
            w.packet(ts, data, flags=flags)
    return path


@given(st.lists(st.tuples(st.integers(0, 2**63 - 1), st.binary(max_size=300),
                          st.sampled_from([None, _pcap.EPB_INBOUND, _pcap.EPB_OUTBOUND])),
                max_size=20))
def test_round_trip(packets):
    buf = io.BytesIO()
    w = _pcap.PcapNgWriter(buf, 147)
    for ts, data, flags in packets:
        w.packet(ts, data, flags=flags)
    with tempfile.NamedTemporaryFile() as f:
        f.write(buf.getvalue())
        f.flush()
        got = list(_pcap.read_pcapng(f.name))
    assert [(p.ts_ns, p.data, p.flags, p.linktype) for p in got] == \
        [(ts, data, flags, 147) for ts, data, flags in packets]


def test_reader_refuses_what_is_not_pcapng(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\0" * 20)       # a classic pcap header
    with pytest.raises(ValueError):
        list(_pcap.read_pcapng(str(bad)))
    good = _write(tmp_path, [(1, b"abc", None)])
    (tmp_path / "cut").write_bytes(good.read_bytes()[:-3])
    with pytest.raises(ValueError):
        list(_pcap.read_pcapng(str(tmp_path / "cut")))


def test_tshark_reads_it(tmp_path):
    tshark = shutil.which("tshark")
    if not tshark:
        pytest.skip("tshark is not installed (Debian package tshark)")
    path = _write(tmp_path, [(1_700_000_000_123_456_789, b"x" * 40, _pcap.EPB_OUTBOUND),
                             (1_700_000_000_223_456_789, b"y" * 41, _pcap.EPB_INBOUND)])
    r = subprocess.run([tshark, "-n", "-r", str(path), "-T", "fields", "-e", "frame.len",
                        "-e", "frame.time_epoch", "-e", "frame.p2p_dir"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert [row[0] for row in rows] == ["40", "41"]
    assert rows[0][1].startswith("1700000000.123456789") and rows[1][1].startswith(
        "1700000000.223456789")
    assert [row[2] for row in rows] == ["0", "1"]        # sent (to the INS), received


def _read(raw: bytes):
    with tempfile.NamedTemporaryFile() as f:
        f.write(raw)
        f.flush()
        return list(_pcap.read_pcapng(f.name))


@given(st.binary(max_size=400))
def test_any_bytes_read_or_valueerror(raw):
    try:
        _read(raw)
    except ValueError:
        pass


@given(st.data())
def test_a_damaged_file_reads_or_raises_valueerror(data):
    buf = io.BytesIO()
    w = _pcap.PcapNgWriter(buf, 147, name="x")
    w.packet(5, b"abcdef", flags=_pcap.EPB_INBOUND, comment="c")
    raw = bytearray(buf.getvalue())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        _read(bytes(raw[:cut]))
    except ValueError:
        pass
