/* The data-area allocator of mwcommsd: see fe_buddy.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fe_buddy.h"

static void push(struct fe_buddy *b, uint32_t page, unsigned int order)
{
    b->free_order[page] = (uint8_t)(order + 1);
    b->prev[page] = -1;
    b->next[page] = b->head[order];
    if (b->head[order] >= 0)
        b->prev[b->head[order]] = (int32_t)page;
    b->head[order] = (int32_t)page;
    b->free_pages += 1u << order;
}

static void unlink_block(struct fe_buddy *b, uint32_t page, unsigned int order)
{
    int32_t n = b->next[page], p = b->prev[page];

    if (p >= 0)
        b->next[p] = n;
    else
        b->head[order] = n;
    if (n >= 0)
        b->prev[n] = p;
    b->free_order[page] = 0;
    b->free_pages -= 1u << order;
}

int fe_buddy_init(struct fe_buddy *b, uint32_t npages)
{
    uint32_t page = 0;

    memset(b, 0, sizeof(*b));
    if (npages == 0)
        return -EINVAL;
    b->free_order = calloc(npages, 1);
    b->next = calloc(npages, sizeof(*b->next));
    b->prev = calloc(npages, sizeof(*b->prev));
    if (!b->free_order || !b->next || !b->prev) {
        fe_buddy_fini(b);
        return -ENOMEM;
    }
    b->npages = npages;
    for (unsigned int o = 0; o < FE_BUDDY_ORDERS; o++)
        b->head[o] = -1;
    /* Carve the area into the largest blocks aligned to their own size. */
    while (page < npages) {
        unsigned int o = FE_BUDDY_ORDERS - 1;

        while (o > 0 && ((page & ((1u << o) - 1)) || page + (1u << o) > npages))
            o--;
        push(b, page, o);
        page += 1u << o;
    }
    return 0;
}

void fe_buddy_fini(struct fe_buddy *b)
{
    free(b->free_order);
    free(b->next);
    free(b->prev);
    memset(b, 0, sizeof(*b));
}

int32_t fe_buddy_alloc(struct fe_buddy *b, unsigned int order)
{
    unsigned int o = order;
    uint32_t page;

    if (order >= FE_BUDDY_ORDERS)
        return -EINVAL;
    while (o < FE_BUDDY_ORDERS && b->head[o] < 0)
        o++;
    if (o == FE_BUDDY_ORDERS)
        return -ENOMEM;
    page = (uint32_t)b->head[o];
    unlink_block(b, page, o);
    while (o > order) {          /* split, keeping the lower half */
        o--;
        push(b, page + (1u << o), o);
    }
    return (int32_t)page;
}

void fe_buddy_free(struct fe_buddy *b, uint32_t page, unsigned int order)
{
    while (order + 1 < FE_BUDDY_ORDERS) {
        uint32_t buddy = page ^ (1u << order);

        if (buddy + (1u << order) > b->npages || b->free_order[buddy] != order + 1)
            break;
        unlink_block(b, buddy, order);
        if (buddy < page)
            page = buddy;
        order++;
    }
    push(b, page, order);
}

int fe_buddy_is_free(const struct fe_buddy *b, uint32_t page, unsigned int order)
{
    for (unsigned int o = order; o < FE_BUDDY_ORDERS; o++) {
        uint32_t head = page & ~((1u << o) - 1);

        if (head >= b->npages || head + (1u << o) > b->npages)
            break;
        if (b->free_order[head] == o + 1)
            return 1;
    }
    return 0;
}

int fe_buddy_order_for(uint32_t bytes)
{
    uint32_t pages = (bytes + 4095u) / 4096u;
    unsigned int o = 0;

    if (bytes == 0)
        return -EINVAL;
    while ((1u << o) < pages)
        if (++o >= FE_BUDDY_ORDERS)
            return -EINVAL;
    return (int)o;
}
