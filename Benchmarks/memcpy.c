// SPDX-License-Identifier: Apache-2.0
// The machine's memcpy rate, measured the way HMX copies: blocks of BLOCK bytes
// copied from a source buffer into a ring-sized destination, cycling through it.
// Usage: memcpy BLOCK RING_BYTES TOTAL_BYTES   (prints bytes/s)
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s BLOCK RING_BYTES TOTAL_BYTES\n", argv[0]);
        return 2;
    }
    size_t block = strtoull(argv[1], NULL, 10);
    size_t ring = strtoull(argv[2], NULL, 10);
    size_t total = strtoull(argv[3], NULL, 10);
    if (block == 0 || ring < block) return 2;
    char *src = malloc(block);
    char *dst = malloc(ring);
    memset(src, 0x5a, block);
    memset(dst, 0, ring);
    size_t offset = 0;
    volatile uint64_t sink = 0;
    double start = now();
    for (size_t done = 0; done < total; done += block) {
        if (offset + block > ring) offset = 0;
        memcpy(dst + offset, src, block);
        sink += (unsigned char)dst[offset];
        offset += block;
    }
    double seconds = now() - start;
    printf("%.0f\n", (double)total / seconds);
    return (int)(sink == 1);
}
