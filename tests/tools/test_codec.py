"""The codec as a user sees it: exact bytes against docs/protocol.md's tables, the address
helpers, the inspection structures, and the C codec under AddressSanitizer and UBSan."""
import ipaddress
import pathlib
import shutil
import socket
import subprocess

import pytest

from mwcomms.tools import codec as C

TOP = pathlib.Path(__file__).resolve().parents[2]


def test_ping_bytes_follow_the_table():
    b = C.Ping(0x01020304, 0x1122334455667788).encode()
    assert b == (bytes.fromhex("04030201" "0f00" "0000" "00000000" "00000000"
                               "8877665544332211") + bytes(104))
    assert C.decode_request(b) == C.Ping(0x01020304, 0x1122334455667788)


def test_connect_bytes_follow_the_table():
    b = C.Connect(7, 3, C.SockAddr.from_tuple(("192.0.2.1", 80))).encode()
    expected = (bytes.fromhex("07000000" "0200" "0000" "03000000" "00000000")   # header
                + bytes.fromhex("0200" "0050" "00000000" "c0000201") + bytes(12)  # family..addr
                + bytes(8)                                                       # scope, pad
                + bytes(80))
    assert b == expected


def test_response_bytes_follow_the_table():
    sa = C.SockAddr(ipaddress.IPv6Address("2001:db8::1"), 443, 0x12345, 3)
    b = C.Response(9, C.CMD_GETSOCKNAME, 4, 0, sa).encode()
    expected = (bytes.fromhex("09000000" "0a00" "0000" "04000000" "00000000" "0000000000000000")
                + bytes.fromhex("0a00" "01bb" "00012345") + ipaddress.IPv6Address("2001:db8::1").packed
                + bytes.fromhex("03000000" "00000000") + bytes(72))
    assert b == expected
    err = C.Response(9, C.CMD_CONNECT, 4, -111).encode()
    assert err[12:16] == (-111).to_bytes(4, "little", signed=True) and not any(err[16:])


def test_sockaddr_matches_the_socket_module():
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        name = s.getsockname()
    sa = C.SockAddr.from_tuple(name)
    assert sa.family == C.AF_INET6 and sa.to_tuple() == name
    assert sa.encode()[8:24] == socket.inet_pton(socket.AF_INET6, "::1")
    v4 = C.SockAddr.from_tuple(("127.0.0.1", 8080))
    assert v4.to_tuple() == ("127.0.0.1", 8080)
    assert v4.encode()[2:4] == (8080).to_bytes(2, "big")
    assert C.SockAddr().family == C.AF_UNSPEC
    with pytest.raises(ValueError):
        C.SockAddr().to_tuple()


def test_errors_are_value_errors_with_a_reason():
    with pytest.raises(ValueError) as info:
        C.decode_request(bytes(127))
    assert isinstance(info.value, C.ProtocolError) and "128" in info.value.reason
    with pytest.raises(C.ProtocolError, match="socket slot out of range"):
        C.decode_request(C.Close(1, 40).encode(), C.Limits(sock_slots=32, data_pages=1))
    assert C.decode_request(C.Close(1, 31).encode(), C.Limits(sock_slots=32, data_pages=1))


def test_unknown_command_is_a_message_not_an_error():
    b = C.UnknownCommand(5, 99, 3).encode()
    assert C.decode_request(b + b"") == C.UnknownCommand(5, 99, 3)
    with pytest.raises(C.ProtocolError, match="response command unknown"):
        C.decode_response(C.Response(5, 99, 3, -95).encode())


def test_limits_follow_the_negotiated_area():
    small = C.Limits(sock_slots=32, data_pages=4)
    ok = C.Socket(1, 0, C.AF_INET, C.SOCK_STREAM, 0, C.Rings(0, 8192, 13, 13))
    assert C.decode_request(ok.encode(), small) == ok
    too_far = C.Socket(1, 0, C.AF_INET, C.SOCK_STREAM, 0, C.Rings(0, 12288, 13, 13))
    with pytest.raises(C.ProtocolError, match="ring outside the data area"):
        C.decode_request(too_far.encode(), small)


def test_gai_query_null_and_names():
    blob, node_len, service_len = C.GaiQuery(b"example.org", None).encode()
    assert (blob, node_len, service_len) == (b"example.org", 11, 0)
    assert C.decode_gai_query(blob + bytes(50), node_len, service_len) == C.GaiQuery(b"example.org")
    assert C.decode_gai_query(b"", 0, 0) == C.GaiQuery(None, None)


def test_answers_round_trip():
    ai = C.AiAnswer((C.AiEntry(C.SOCK_STREAM, C.IPPROTO_TCP, C.SockAddr.from_tuple(("::1", 80))),),
                    b"localhost")
    blob = ai.encode()
    assert len(blob) == 8 + 48 + 9 and C.decode_ai_answer(blob) == ai
    ni = C.NiAnswer(b"localhost", b"http")
    assert C.decode_ni_answer(ni.encode()) == ni


def test_dgram_record_size():
    assert C.dgram_record_size(0) == 40
    assert C.dgram_record_size(1) == 48
    assert C.dgram_record_size(8) == 48
    assert C.dgram_record_size(C.DGRAM_MAX) == 40 + 65536


def test_shared_structures_for_inspection():
    page = C.CtrlPage(req_prod=1, rsp_event=2, fq_prod=3, fq_overflow=4, bq_cons=5, bq_event=6,
                      rsp_prod=7, req_event=8, bq_prod=9, bq_overflow=10, fq_cons=11, fq_event=12)
    raw = page.encode()
    assert len(raw) == 128
    assert raw[0:4] == (1).to_bytes(4, "little") and raw[64:68] == (7).to_bytes(4, "little")
    assert raw[84:88] == (12).to_bytes(4, "little")
    assert C.CtrlPage.decode(raw + bytes(C.PAGE_SIZE - 128)) == page
    entry = C.SockShared(tx_prod=1, rx_prod=2, rx_flags=C.RXF_EOF | C.RXF_ERROR, error=-104)
    raw = entry.encode()
    assert len(raw) == 128
    assert raw[64:68] == (2).to_bytes(4, "little")
    assert raw[80:84] == (3).to_bytes(4, "little")
    assert raw[84:88] == (-104).to_bytes(4, "little", signed=True)
    assert C.SockShared.decode(raw) == entry


# ---- the C codec under sanitizers --------------------------------------------------------------
HARNESS = r"""
/* Feed the C codec mutated and random messages, each in a buffer of its exact size, so that
 * AddressSanitizer sees any read past a message and UBSan any undefined arithmetic. Checks two
 * properties on the way: a normalized message is valid and normalizes to itself, and a valid
 * message of a known kind normalizes to its own bytes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mwcomms/codec.h"

static uint64_t seed = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    return seed;
}

static void mutate(uint8_t *p, size_t n)
{
    int k = 1 + rnd() % 3;

    if (!n)
        return;
    while (k--) {
        size_t at = rnd() % (rnd() % 2 ? (n < 64 ? n : 64) : n);
        p[at] = rnd() % 4 ? (uint8_t)rnd() : p[at] ^ (1u << (rnd() % 8));
    }
}

#define FAILED(...) do { printf("FAIL " __VA_ARGS__); printf("\n"); return 1; } while (0)

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 100000;
    struct mw_limits lim = { .sock_slots = 1024, .data_pages = 8192 };
    long ok = 0, bad = 0;
    struct mw_sockaddr v4, v6;
    struct mw_rings rings;
    uint8_t a4[4] = { 192, 0, 2, 1 }, a6[16] = { 0x20, 1, 0xd, 0xb8, [15] = 1 };

    mw_sockaddr_build(&v4, MW_AF_INET, 80, a4, 0, 0);
    mw_sockaddr_build(&v6, MW_AF_INET6, 443, a6, 7, 2);
    mw_rings_build(&rings, 0, 4096, 12, 12);

    for (long i = 0; i < iters; i++) {
        struct mw_req req;
        struct mw_rsp rsp;
        struct mw_event ev;
        struct mw_dgram_hdr dg;
        struct mw_ai_entry ents[3];
        uint8_t *in, *out, *out2, blob[512];
        const char *why = NULL;
        int rc, n;

        switch (rnd() % 8) {
        case 0: mw_req_build_socket(&req, 1, 2, MW_AF_INET6, MW_SOCK_DGRAM, 17, &rings); break;
        case 1: mw_req_build_getaddrinfo(&req, 1, 64, 512, 10, 2, 3, 0, 1, 6); break;
        case 2: mw_req_build_setsockopt(&req, 1, 2, 1, 2, 4, 0, 0, "abcd"); break;
        case 3: mw_req_build_getnameinfo(&req, 1, 64, 512, &v6, 1); break;
        case 4: mw_req_build_accept(&req, 1, 2, 3, &rings); break;
        case 5: mw_req_build_connect(&req, 1, 2, &v4); break;
        case 6: mw_req_build_getsockopt(&req, 1, 2, 1, 2, 200, 8, 200); break;
        default: memset(&req, 0, sizeof(req)); req.cmd = rnd() % 17; break;
        }
        in = malloc(sizeof(req));
        out = malloc(sizeof(req));
        out2 = malloc(sizeof(req));
        memcpy(in, &req, sizeof(req));
        mutate(in, sizeof(req));
        rc = mw_req_normalize(in, out, &lim, &why);
        if (rc == 0 || rc == -EOPNOTSUPP) {
            if (mw_req_normalize(out, out2, &lim, &why) != rc || memcmp(out, out2, sizeof(req)))
                FAILED("request normalization not idempotent at %ld", i);
            if (rc == 0 && memcmp(in, out, sizeof(req)))
                FAILED("valid request with a second encoding at %ld", i);
            ok++;
        } else if (rc == -EPROTO && why) {
            bad++;
        } else {
            FAILED("request check returned %d without a reason", rc);
        }
        free(in);
        free(out);
        free(out2);

        switch (rnd() % 4) {
        case 0: mw_rsp_build_addr(&rsp, 1, MW_CMD_ACCEPT, 2, &v6); break;
        case 1: mw_rsp_build_sockopt(&rsp, 1, 2, 4, "abcd"); break;
        case 2: mw_rsp_build_gai(&rsp, 1, MW_CMD_GETADDRINFO, 0, 0, 64); break;
        default: mw_rsp_build(&rsp, 1, rnd() % 17, 2, -(int32_t)(rnd() % 5000)); break;
        }
        in = malloc(sizeof(rsp));
        out = malloc(sizeof(rsp));
        memcpy(in, &rsp, sizeof(rsp));
        mutate(in, sizeof(rsp));
        rc = mw_rsp_normalize(in, out, &lim, &why);
        if (rc == 0 && memcmp(in, out, sizeof(rsp)))
            FAILED("valid response with a second encoding at %ld", i);
        rc == 0 ? ok++ : bad++;
        free(in);
        free(out);

        mw_event_build(&ev, rnd() % 2048, rnd() % 5, rnd());
        mutate((uint8_t *)&ev, sizeof(ev));
        in = malloc(sizeof(ev));
        memcpy(in, &ev, sizeof(ev));
        rc = mw_event_check((const struct mw_event *)in, &lim, rnd() % 2, &why);
        rc == 0 ? ok++ : bad++;
        free(in);

        mw_dgram_build(&dg, rnd() % 70000, rnd() % 2 ? &v4 : &v6);
        mutate((uint8_t *)&dg, sizeof(dg));
        in = malloc(sizeof(dg));
        memcpy(in, &dg, sizeof(dg));
        rc = mw_dgram_check((const struct mw_dgram_hdr *)in, 1u << (12 + rnd() % 13),
                            rnd() % 2, &why);
        rc == 0 ? ok++ : bad++;
        free(in);

        mw_ai_entry_build(&ents[0], 1, 6, &v4);
        mw_ai_entry_build(&ents[1], 2, 17, &v6);
        mw_ai_entry_build(&ents[2], 3, 0, &v6);
        n = mw_ai_answer_build(blob, sizeof(blob), ents, rnd() % 4, "example.org", rnd() % 12);
        if (n < 0)
            FAILED("ai answer build");
        mutate(blob, n);
        n = rnd() % 8 ? n : (int)(rnd() % (n + 1));
        in = malloc(n ? n : 1);
        out = malloc(n ? n : 1);
        memcpy(in, blob, n);
        rc = mw_ai_answer_normalize(in, n, out, &why);
        if (rc >= 0 && (rc != n || memcmp(in, out, n)))
            FAILED("valid ai answer with a second encoding at %ld", i);
        rc >= 0 ? ok++ : bad++;
        free(in);
        free(out);

        n = mw_ni_answer_build(blob, sizeof(blob), "example.org", rnd() % 12, "http", rnd() % 5);
        mutate(blob, n);
        n = rnd() % 8 ? n : (int)(rnd() % (n + 1));
        in = malloc(n ? n : 1);
        out = malloc(n ? n : 1);
        memcpy(in, blob, n);
        rc = mw_ni_answer_normalize(in, n, out, &why);
        if (rc >= 0 && (rc != n || memcmp(in, out, n)))
            FAILED("valid ni answer with a second encoding at %ld", i);
        rc >= 0 ? ok++ : bad++;
        rc = mw_gai_query_check(in, n, rnd() % 1100, rnd() % 70, &why);
        free(in);
        free(out);
    }
    printf("OK valid=%ld rejected=%ld\n", ok, bad);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_c_codec_under_sanitizers(tmp_path):
    src = TOP / "xen" / "codec.c"
    if not src.exists():
        pytest.skip(f"{src} not found (tests run outside the source tree)")
    harness = tmp_path / "codec_fuzz.c"
    harness.write_text(HARNESS)
    exe = tmp_path / "codec_fuzz"
    build = subprocess.run(
        ["gcc", "-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
         "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         "-I", str(TOP / "xen" / "include"), str(harness), str(src), "-o", str(exe)],
        capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe), "40000"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stderr == ""
    line = run.stdout.strip().splitlines()[-1]
    assert line.startswith("OK "), run.stdout
    counts = dict(kv.split("=") for kv in line.split()[1:])
    assert int(counts["valid"]) > 10000 and int(counts["rejected"]) > 10000


def test_encode_refuses_what_does_not_fit_a_slot():
    with pytest.raises(ValueError, match="does not fit"):
        C.SetSockOpt(1, 2, 1, 2, bytes(89)).encode()
    with pytest.raises(ValueError, match="at most 88"):
        C.Response(1, C.CMD_GETSOCKOPT, 2, 0, C.OptValue(89, bytes(89))).encode()
    assert len(C.SetSockOpt(1, 2, 1, 2, bytes(88)).encode()) == C.SLOT_SIZE
