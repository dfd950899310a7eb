"""mwctl trace's decoding of records (what mwcommsd copied, the INS's bytes unchecked): every
message the codec knows decodes to its fields, anything else is shown, never a crash."""
import struct

from hypothesis import given, strategies as st

from mwcomms.tools import codec, mwctl

REC = b"\0" * 40     # struct mwl_trace_rec: _decode reads the payload after it


def test_known_messages_decode_to_their_fields():
    req = codec.Connect(7, 3, codec.SockAddr.from_tuple(("10.0.0.1", 80))).encode()
    d = mwctl._decode({"kind": 1, "len": 128, "slot": 3}, REC + req)
    assert (d["dir"], d["kind"], d["cmd"]) == ("->INS", "REQ", "CONNECT")
    assert d["msg"]["addr"] == "10.0.0.1:80" and d["msg"]["id"] == 7
    rsp = codec.Response(7, codec.CMD_CONNECT, 3, -111).encode()
    d = mwctl._decode({"kind": 2, "len": 128, "slot": 3}, REC + rsp)
    assert (d["dir"], d["msg"]["ret"], d["msg"]["errno"]) == ("<-INS", -111, "ECONNREFUSED")
    ev = codec.Event(3, codec.EV_STATE, 5).encode()
    d = mwctl._decode({"kind": 4, "len": 16, "slot": 3}, REC + ev)
    assert d["msg"] == {"sock": 3, "type": "STATE", "arg": 5}
    addr = codec.SockAddr.from_tuple(("::1", 53, 0, 0)).encode()
    d = mwctl._decode({"kind": 6, "len": 2, "slot": 3}, REC + addr + b"hi")
    assert d["msg"] == {"len": 2, "addr": {"host": "::1", "port": 53}, "data": "6869"}


def test_hostile_bytes_are_shown_not_trusted():
    d = mwctl._decode({"kind": 2, "len": 128, "slot": 1}, REC + b"\xff" * 128)
    assert d["text"].startswith("undecodable (") and "error" in d["msg"]
    bad_ev = struct.pack("<IHHQ", 1, 9, 0, 0)
    assert mwctl._decode({"kind": 4, "len": 16, "slot": 1}, REC + bad_ev)["text"].startswith(
        "undecodable (event type unknown)")
    assert mwctl._decode({"kind": 6, "len": 1, "slot": 1},
                         REC + b"\x07" * 32 + b"x")["msg"]["addr"] == {"raw": "07" * 32}
    assert mwctl._decode({"kind": 77, "len": 1, "slot": None}, REC + b"z")["text"] == \
        "record kind 77: 7a"


@given(kind=st.integers(0, 10), body=st.binary(max_size=200))
def test_any_record_decodes_to_text(kind, body):
    d = mwctl._decode({"kind": kind, "len": len(body), "slot": None}, REC + body)
    assert isinstance(d["text"], str) and d["dir"] in ("->INS", "<-INS")
