/*
 * mwcommsd's data-area allocator (mwcomms/engine/fe_buddy.c): random allocations and frees
 * over areas of awkward sizes. Every block is aligned to its size, inside the area, and never
 * overlaps another; freeing everything merges back to the initial free page count and lets
 * the largest blocks be allocated again. Prints "OK buddy <rounds>" on success.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fe_buddy.h"

#define CHECK(c) do { if (!(c)) { printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #c); \
    exit(1); } } while (0)

struct blk { int32_t page; unsigned int order; };

static void run(uint32_t npages, unsigned int seed)
{
    struct fe_buddy b;
    struct blk *blks = calloc(npages, sizeof(*blks));
    uint8_t *owner = calloc(npages, 1);
    unsigned int n = 0;
    int32_t first;

    CHECK(blks && owner);
    srand(seed);
    CHECK(fe_buddy_init(&b, npages) == 0);
    CHECK(b.free_pages == npages);
    for (int step = 0; step < 20000; step++) {
        if (n > 0 && (rand() % 3 == 0 || n == npages)) {
            unsigned int i = (unsigned int)rand() % n;

            for (uint32_t p = 0; p < (1u << blks[i].order); p++)
                owner[blks[i].page + p] = 0;
            fe_buddy_free(&b, (uint32_t)blks[i].page, blks[i].order);
            blks[i] = blks[--n];
            continue;
        }
        unsigned int order = (unsigned int)rand() % 6;
        int32_t page = fe_buddy_alloc(&b, order);

        if (page == -ENOMEM)
            continue;
        CHECK(page >= 0);
        CHECK(((uint32_t)page & ((1u << order) - 1)) == 0);          /* aligned to its size */
        CHECK((uint32_t)page + (1u << order) <= npages);             /* inside the area */
        for (uint32_t p = 0; p < (1u << order); p++) {
            CHECK(owner[page + p] == 0);                              /* no overlap */
            owner[page + p] = 1;
        }
        blks[n].page = page;
        blks[n].order = order;
        n++;
        /* fe_buddy_is_free: an allocated block is not free; any freed one is, as the owner
         * map says (a block is free exactly when none of its pages is owned) */
        CHECK(!fe_buddy_is_free(&b, (uint32_t)page, order));
        if (n > 1) {
            unsigned int j = (unsigned int)rand() % (n - 1);
            uint32_t q = (uint32_t)blks[j].page;
            int owned = 0;

            for (uint32_t p = 0; p < (1u << blks[j].order); p++)
                owned |= owner[q + p];
            CHECK(fe_buddy_is_free(&b, q, blks[j].order) == !owned);
        }
    }
    while (n > 0) {
        n--;
        fe_buddy_free(&b, (uint32_t)blks[n].page, blks[n].order);
        CHECK(fe_buddy_is_free(&b, (uint32_t)blks[n].page, blks[n].order));
    }
    CHECK(b.free_pages == npages);
    /* everything merged back: the largest aligned block fits again */
    unsigned int top = 0;
    while (top + 1 < FE_BUDDY_ORDERS && (2u << top) <= npages)
        top++;
    for (uint32_t k = 0; k < (npages >> top); k++) {   /* as many as at the start */
        first = fe_buddy_alloc(&b, top);
        CHECK(first >= 0);
        blks[n].page = first;
        blks[n++].order = top;
    }
    CHECK(fe_buddy_alloc(&b, top) == -ENOMEM);
    while (n > 0) {
        n--;
        fe_buddy_free(&b, (uint32_t)blks[n].page, blks[n].order);
    }
    CHECK(b.free_pages == npages);
    CHECK(fe_buddy_alloc(&b, FE_BUDDY_ORDERS) == -EINVAL);
    CHECK(fe_buddy_order_for(1) == 0 && fe_buddy_order_for(4097) == 1 &&
          fe_buddy_order_for(65536) == 4 && fe_buddy_order_for(0) == -EINVAL);
    fe_buddy_fini(&b);
    free(blks);
    free(owner);
}

int main(void)
{
    static const uint32_t sizes[] = { 1, 3, 64, 1000, 4097, 8192, 12345 };
    unsigned int rounds = 0;

    for (unsigned int i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        for (unsigned int seed = 1; seed <= 3; seed++, rounds++)
            run(sizes[i], seed);
    printf("OK buddy %u\n", rounds);
    return 0;
}
