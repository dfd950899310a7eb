-- Wireshark / tshark dissector of `mwctl trace --pcap` files (docs/mwctl.md).
--
--   tshark -X lua_script:$(mwctl dissector) -r trace.pcapng
--   tshark -X lua_script:$(mwctl dissector) -r trace.pcapng -T fields -e mwcomms.kind -e mwcomms.cmd
--
-- Encapsulation: link type LINKTYPE_USER0 (147, DLT_USER0). Each packet is one trace record of
-- mwcommsd exactly as it sent it to the tracer (mwcomms/include/mwcomms/introspect.h), little
-- endian: struct mwl_trace_rec (40 bytes: ns u64, kind u16, flags u16, slot u32, handle u64,
-- pid i32, len u32, dropped u32, pad u32), then by kind
--   1 REQ / 2 RSP   the 128-byte command slot (docs/protocol.md: struct mw_req / mw_rsp)
--   3 EV_TX / 4 EV_RX   the 16-byte event record (sock u32, type u16, flags u16, arg u64)
--   5 DATA_TX / 6 DATA_RX   struct mw_sockaddr (32 bytes: a datagram's address, else zero)
--                           then the first bytes moved (handed to the "data" dissector)
-- The packet's direction (epb_flags) is outbound for what goes to the INS.

local mw = Proto("mwcomms", "mwcomms ring trace")

local KINDS = { [1] = "REQ", [2] = "RSP", [3] = "EV_TX", [4] = "EV_RX", [5] = "DATA_TX",
                [6] = "DATA_RX" }
local CMDS = { [1] = "SOCKET", [2] = "CONNECT", [3] = "BIND", [4] = "LISTEN", [5] = "ACCEPT",
               [6] = "SHUTDOWN", [7] = "CLOSE", [8] = "GETSOCKOPT", [9] = "SETSOCKOPT",
               [10] = "GETSOCKNAME", [11] = "GETPEERNAME", [12] = "GETADDRINFO",
               [13] = "GETNAMEINFO", [14] = "IOCTL", [15] = "PING" }
local EVENTS = { [1] = "DATA", [2] = "SPACE", [3] = "STATE" }
local FAMILIES = { [0] = "AF_UNSPEC", [2] = "AF_INET", [10] = "AF_INET6" }
-- responses whose body is an address (docs/protocol.md)
local ADDR_RSP = { [2] = true, [3] = true, [5] = true, [10] = true, [11] = true }

local f = mw.fields
f.ns = ProtoField.uint64("mwcomms.ns", "Timestamp (ns)")
f.kind = ProtoField.uint16("mwcomms.kind", "Kind", base.DEC, KINDS)
f.flags = ProtoField.uint16("mwcomms.flags", "Record flags", base.HEX)
f.slot = ProtoField.uint32("mwcomms.slot", "INS socket slot")
f.handle = ProtoField.uint64("mwcomms.handle", "Socket handle", base.HEX)
f.pid = ProtoField.int32("mwcomms.pid", "Owner pid")
f.len = ProtoField.uint32("mwcomms.len", "Length")
f.dropped = ProtoField.uint32("mwcomms.dropped", "Records dropped before this one")
f.id = ProtoField.uint32("mwcomms.id", "Request id", base.HEX)
f.cmd = ProtoField.uint16("mwcomms.cmd", "Command", base.DEC, CMDS)
f.mflags = ProtoField.uint16("mwcomms.msg_flags", "Message flags", base.HEX)
f.sock = ProtoField.uint32("mwcomms.sock", "Socket")
f.ret = ProtoField.int32("mwcomms.ret", "Result (negative errno)")
f.family = ProtoField.uint16("mwcomms.family", "Family", base.DEC, FAMILIES)
f.port = ProtoField.uint16("mwcomms.port", "Port")
f.ipv4 = ProtoField.ipv4("mwcomms.ipv4", "IPv4 address")
f.ipv6 = ProtoField.ipv6("mwcomms.ipv6", "IPv6 address")
f.backlog = ProtoField.int32("mwcomms.backlog", "Backlog")
f.how = ProtoField.int32("mwcomms.how", "Shutdown how", base.DEC,
                         { [0] = "SHUT_RD", [1] = "SHUT_WR", [2] = "SHUT_RDWR" })
f.level = ProtoField.int32("mwcomms.level", "Option level")
f.optname = ProtoField.int32("mwcomms.optname", "Option name")
f.optlen = ProtoField.uint32("mwcomms.optlen", "Option length")
f.ioctl = ProtoField.uint32("mwcomms.ioctl", "Ioctl", base.DEC,
                            { [1] = "SIOCATMARK", [2] = "SIOCOUTQ", [3] = "SIOCINQ" })
f.gai_status = ProtoField.int32("mwcomms.gai_status", "Resolver status (EAI_*)")
f.gai_len = ProtoField.uint32("mwcomms.gai_len", "Answer length")
f.new_sock = ProtoField.uint32("mwcomms.new_sock", "New socket slot")
f.ev_type = ProtoField.uint16("mwcomms.event", "Event", base.DEC, EVENTS)
f.ev_arg = ProtoField.uint64("mwcomms.event_arg", "Event argument")
f.body = ProtoField.bytes("mwcomms.body", "Body")

local data_dissector = Dissector.get("data")

-- struct mw_sockaddr at tvb(off, 32): adds its fields, returns "host:port" or nil
local function sockaddr(tvb, off, tree)
    local family = tvb(off, 2):le_uint()
    if family == 0 then return nil end
    local st = tree:add(mw, tvb(off, 32), "Address")
    st:add_le(f.family, tvb(off, 2))
    st:add(f.port, tvb(off + 2, 2))
    local port = tvb(off + 2, 2):uint()
    if family == 2 then
        st:add(f.ipv4, tvb(off + 8, 4))
        return tostring(tvb(off + 8, 4):ipv4()) .. ":" .. port
    elseif family == 10 then
        st:add(f.ipv6, tvb(off + 8, 16))
        return "[" .. tostring(tvb(off + 8, 16):ipv6()) .. "]:" .. port
    end
    return "family " .. family
end

local function request(tvb, tree)
    local cmd = tvb(4, 2):le_uint()
    tree:add_le(f.id, tvb(0, 4))
    tree:add_le(f.cmd, tvb(4, 2))
    tree:add_le(f.mflags, tvb(6, 2))
    tree:add_le(f.sock, tvb(8, 4))
    local info = (CMDS[cmd] or ("cmd " .. cmd)) .. " sock=" .. tvb(8, 4):le_uint()
    if cmd == 2 or cmd == 3 then
        local a = sockaddr(tvb, 16, tree)
        if a then info = info .. " " .. a end
    elseif cmd == 4 then
        tree:add_le(f.backlog, tvb(16, 4))
        info = info .. " backlog=" .. tvb(16, 4):le_int()
    elseif cmd == 5 then
        tree:add_le(f.new_sock, tvb(16, 4))
        info = info .. " new_sock=" .. tvb(16, 4):le_uint()
    elseif cmd == 6 then
        tree:add_le(f.how, tvb(16, 4))
        info = info .. " how=" .. tvb(16, 4):le_int()
    elseif cmd == 8 or cmd == 9 then
        tree:add_le(f.level, tvb(16, 4))
        tree:add_le(f.optname, tvb(20, 4))
        tree:add_le(f.optlen, tvb(24, 4))
        info = info .. " level=" .. tvb(16, 4):le_int() .. " name=" .. tvb(20, 4):le_int()
    elseif cmd == 14 then
        tree:add_le(f.ioctl, tvb(16, 4))
    end
    tree:add(f.body, tvb(16, 112))
    return info
end

local function response(tvb, tree)
    local cmd = tvb(4, 2):le_uint()
    local ret = tvb(12, 4):le_int()
    tree:add_le(f.id, tvb(0, 4))
    tree:add_le(f.cmd, tvb(4, 2))
    tree:add_le(f.mflags, tvb(6, 2))
    tree:add_le(f.sock, tvb(8, 4))
    tree:add_le(f.ret, tvb(12, 4))
    local info = (CMDS[cmd] or ("cmd " .. cmd)) .. " sock=" .. tvb(8, 4):le_uint() .. " ret=" .. ret
    if ret >= 0 and ADDR_RSP[cmd] then
        local a = sockaddr(tvb, 24, tree)
        if a then info = info .. " " .. a end
    elseif ret >= 0 and cmd == 8 then
        tree:add_le(f.optlen, tvb(24, 4))
    elseif ret >= 0 and (cmd == 12 or cmd == 13) then
        tree:add_le(f.gai_status, tvb(24, 4))
        tree:add_le(f.gai_len, tvb(32, 4))
        info = info .. " status=" .. tvb(24, 4):le_int() .. " len=" .. tvb(32, 4):le_uint()
    end
    tree:add(f.body, tvb(24, 104))
    return info
end

function mw.dissector(tvb, pinfo, tree)
    if tvb:len() < 40 then return 0 end
    pinfo.cols.protocol = "MWCOMMS"
    local kind = tvb(8, 2):le_uint()
    local t = tree:add(mw, tvb(), "mwcomms " .. (KINDS[kind] or ("kind " .. kind)))
    t:add_le(f.ns, tvb(0, 8))
    t:add_le(f.kind, tvb(8, 2))
    t:add_le(f.flags, tvb(10, 2))
    t:add_le(f.slot, tvb(12, 4))
    t:add_le(f.handle, tvb(16, 8))
    t:add_le(f.pid, tvb(24, 4))
    t:add_le(f.len, tvb(28, 4))
    t:add_le(f.dropped, tvb(32, 4))
    local body = tvb(40):tvb()
    local info
    if (kind == 1 or kind == 2) and body:len() >= 128 then
        local m = t:add(mw, body(0, 128), kind == 1 and "Request" or "Response")
        info = (kind == 1 and "REQ " or "RSP ") .. (kind == 1 and request or response)(body, m)
    elseif (kind == 3 or kind == 4) and body:len() >= 16 then
        local m = t:add(mw, body(0, 16), "Event")
        m:add_le(f.sock, body(0, 4))
        m:add_le(f.ev_type, body(4, 2))
        m:add_le(f.mflags, body(6, 2))
        m:add_le(f.ev_arg, body(8, 8))
        info = "EV " .. (EVENTS[body(4, 2):le_uint()] or "?") .. " sock=" .. body(0, 4):le_uint()
    elseif (kind == 5 or kind == 6) and body:len() >= 32 then
        local a = sockaddr(body, 0, t)
        info = (kind == 5 and "DATA -> INS" or "DATA <- INS") .. " slot=" .. tvb(12, 4):le_uint() ..
               " len=" .. tvb(28, 4):le_uint() .. (a and (" " .. a) or "")
        if body:len() > 32 then
            data_dissector:call(body(32):tvb(), pinfo, tree)
        end
    else
        info = "malformed record"
    end
    pinfo.cols.info = info
    return tvb:len()
end

local encaps = wtap_encaps or wtap
DissectorTable.get("wtap_encap"):add(encaps.USER0, mw)
