/*
 * ring_stress as one translation unit, for the real-Xen harness (tests/realxen), which builds
 * tests/c/ring_xen.c with the C files of xen/ into one static program per guest. It is
 * ring_stress, with the same command line (tests/c/README.md); across two domains run one side
 * in each:
 *
 *   dom0:  ring_xen --role=front --platform --mode=doorbell --remote=<domU id> --xchg=FILE ...
 *   domU:  ring_xen --role=back --platform --mode=doorbell --remote=0 --xchg=FILE ...
 *
 * with FILE carried from dom0 to the domU by the harness, and the same counts and seed on
 * both sides.
 */
#include "ring_stress_core.c"
#include "ring_stress.c"
