/* Everything the cffi extension mwcomms._native exposes to Python: the public headers of the
 * data plane, gathered in one place for mwcomms/_native_build.py. Each component that adds a
 * *.cdef file adds its header here. */
#ifndef MWCOMMS_NATIVE_H
#define MWCOMMS_NATIVE_H
#include "mwcomms/proto.h"
#include "mwcomms/platform.h"
#include "mwcomms/ring.h"
#include "mwcomms/probe.h"
#include "mwcomms/codec.h"
#include "ins_engine.h"
#include "mwfront.h"
#endif
