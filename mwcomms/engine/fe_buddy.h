/*
 * The data-area allocator of mwcommsd: a buddy allocator over the pages of the data area, for
 * byte rings (2^12 .. 2^24 bytes, aligned to their size within the area) and out-of-line
 * buffers (rounded up to pages). Private to the engine; single-threaded like the loop.
 *
 * Free blocks are kept in one doubly linked list per order, threaded through arrays indexed by
 * page, so allocation and release are O(orders) and need no memory of their own.
 */
#ifndef MWCOMMS_FE_BUDDY_H
#define MWCOMMS_FE_BUDDY_H

#include <stdint.h>

#define FE_BUDDY_ORDERS 13          /* blocks of 2^0 .. 2^12 pages (4 KiB .. 16 MiB) */

struct fe_buddy {
    uint32_t npages;                /* pages managed */
    uint8_t *free_order;            /* per page: order + 1 when a free block starts there */
    int32_t *next, *prev;           /* free list links, per first page of a free block */
    int32_t head[FE_BUDDY_ORDERS];  /* first free block of each order, -1 if none */
    uint32_t free_pages;            /* for stats and tests */
};

/** @return 0, -ENOMEM, -EINVAL (npages 0) */
int fe_buddy_init(struct fe_buddy *b, uint32_t npages);
/** Free the allocator's own memory. Accepts a zeroed struct. */
void fe_buddy_fini(struct fe_buddy *b);
/** @return the first page of a free block of 2^order pages, or -ENOMEM / -EINVAL */
int32_t fe_buddy_alloc(struct fe_buddy *b, unsigned int order);
/** Give back a block from fe_buddy_alloc with the same order. */
void fe_buddy_free(struct fe_buddy *b, uint32_t page, unsigned int order);
/** @return 1 when every page of the block of 2^order pages at `page` is free (in one free
 *          block, maybe merged into a larger one), else 0 */
int fe_buddy_is_free(const struct fe_buddy *b, uint32_t page, unsigned int order);
/** @return the order (in pages) that holds `bytes` (> 0), or -EINVAL when too large */
int fe_buddy_order_for(uint32_t bytes);

#endif /* MWCOMMS_FE_BUDDY_H */
