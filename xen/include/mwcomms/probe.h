/*
 * The link probe: exercise a connected shared area before (or without) the engines.
 *
 * It answers "does this connection work, and how fast?" on the sim and the xen backend alike:
 * the frontend sends PING requests one at a time (round trip), then as many as the command
 * ring holds (message rate), then streams pseudo-random bytes through one byte ring while the
 * INS side checks nothing but hashes what arrives (byte rate); both sides report the FNV-1a-64
 * of the stream and the caller compares them. Both sides wake each other through the event
 * channel, with the notification suppression of docs/protocol.md.
 *
 * The probe owns the area while it runs: use it on a connection no engine is attached to
 * (`make demo` does, before the engines exist; `mwctl` may later). The byte stream uses the
 * last socket slot and the first 2^order bytes of the data area.
 */
#ifndef MWCOMMS_PROBE_H
#define MWCOMMS_PROBE_H

#include <stddef.h>
#include <stdint.h>

#include "mwcomms/platform.h"
#include "mwcomms/ring.h"

struct mw_probe_cfg {
    void *area;                /* the mapped area (frontend: shared, INS: mapped) */
    size_t area_size;          /* bytes of it */
    struct mw_area_geom geom;  /* as negotiated through XenStore */
    struct mw_evtchn *evtchn;  /* the connection's event channel handle */
    uint32_t port;             /* its local port */
    uint64_t round_trips;      /* frontend: PINGs one at a time */
    uint64_t pings;            /* frontend: PINGs with the ring kept full */
    uint64_t bytes;            /* both: bytes of the stream (the INS stops after them) */
    uint8_t order;             /* both: log2 of the stream's ring size */
    uint32_t spin_ns;          /* spin this long on the shared indices before sleeping */
    int timeout_ms;            /* a side that sees no progress this long gives up */
};

struct mw_probe_result {
    uint64_t round_trips;      /* completed */
    double rtt_secs;           /* wall time of the round trips */
    uint64_t pings;            /* completed pipelined PINGs (frontend), answered (INS) */
    double ping_secs;
    uint64_t bytes;            /* sent (frontend) / received (INS) */
    double byte_secs;
    uint64_t hash;             /* FNV-1a-64 over the stream's 64-bit words, as sent / received */
    uint64_t kicks;            /* event channel notifications sent */
    uint64_t sleeps;           /* times this side slept on the event channel */
    char why[160];             /* what went wrong when the call fails */
};

/**
 * Run the frontend side: round trips, pipelined PINGs, the byte stream, then a last PING that
 * tells the INS side the probe is over.
 * @return 0, -EPROTO (the peer broke the protocol), -ETIMEDOUT, -EINVAL (bad config), -errno
 *         of the event channel; res->why says more
 */
int mw_probe_front(const struct mw_probe_cfg *cfg, struct mw_probe_result *res);

/**
 * Run the INS side until the frontend's last PING: answer every PING, take the stream.
 * @return as mw_probe_front()
 */
int mw_probe_back(const struct mw_probe_cfg *cfg, struct mw_probe_result *res);

#endif /* MWCOMMS_PROBE_H */
