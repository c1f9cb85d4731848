// SPDX-License-Identifier: Apache-2.0
// Exposes the layouts and constants of Xen's public <xen/argo.h> (from libxen-dev)
// to Swift tests, so HMXCore's numbers are checked against compiled C, not copies.
#ifndef CXEN_ABI_H
#define CXEN_ABI_H
#include <stdint.h>

typedef struct {
    const char *name;
    uint64_t value;
} cxen_abi_fact;

/// Returns the number of facts and points `*facts` at a static table.
int cxen_abi_facts(const cxen_abi_fact **facts);
#endif
