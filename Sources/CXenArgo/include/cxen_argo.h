// SPDX-License-Identifier: Apache-2.0
// A thin C layer between HMXXen (Swift) and Xen's user-space interfaces:
//
//   * hypercalls and hypercall-safe buffers: libxencall (it uses /dev/xen/privcmd's
//     IOCTL_PRIVCMD_HYPERCALL and /dev/xen/hypercall buffers that never fault);
//   * VIRQ_ARGO: libxenevtchn (/dev/xen/evtchn);
//   * ring frames that never move:
//       - PV guests: XENMEM_increase_reservation (through libxencall) hands out fresh
//         machine frames that Linux never owns; libxenforeignmemory maps them with
//         IOCTL_PRIVCMD_MMAPBATCH_V2 on DOMID_SELF;
//       - auto-translated guests (HVM/PVH): /dev/xen/hypercall pages (kernel pages,
//         never migrated) whose frame numbers come from /proc/self/pagemap; cxa_open
//         refuses such a guest without that device, where libxencall would fall back
//         to anonymous memory that the kernel may move;
//   * the domain id: libxenstore ("domid"), or 0 in the control domain.
//
// Every function returns 0 (or a count) on success and a negative errno on failure,
// never -1 + errno, so Swift does not have to read the thread-local errno.
#ifndef CXEN_ARGO_H
#define CXEN_ARGO_H

#include <stddef.h>
#include <stdint.h>

typedef struct cxa_hypervisor cxa_hypervisor;

/// How ring frames are obtained (see the file comment).
typedef enum {
    CXA_FRAMES_RESERVATION = 1,  ///< PV: increase_reservation + MMAPBATCH_V2(DOMID_SELF)
    CXA_FRAMES_PAGEMAP = 2,      ///< HVM/PVH: hypercall pages + /proc/self/pagemap
} cxa_frame_method;

/// Opens libxencall and libxenforeignmemory. Errors: -ENOENT (no privcmd), -EACCES...
/// Diagnostic text (if any) goes to `message` (NUL-terminated, truncated to `size`).
int cxa_open(cxa_hypervisor **out, char *message, size_t size);
void cxa_close(cxa_hypervisor *h);

/// The frame method chosen from /sys/hypervisor/guest_type.
cxa_frame_method cxa_frame_method_of(const cxa_hypervisor *h);
/// "PV", "HVM", "PVH" or "unknown".
const char *cxa_guest_type(const cxa_hypervisor *h);

/// argo_op(cmd, arg1, arg2, arg3, arg4): the hypercall's result (>= 0) or -errno.
/// Pointers must point into buffers from cxa_buffer_alloc (or ring mappings).
long cxa_argo_op(cxa_hypervisor *h, unsigned int cmd, uint64_t arg1, uint64_t arg2,
                 uint64_t arg3, uint64_t arg4);

/// Hypercall-safe memory (xencall_alloc_buffer_pages), zeroed. NULL on failure.
void *cxa_buffer_alloc(cxa_hypervisor *h, size_t pages);
void cxa_buffer_free(cxa_hypervisor *h, void *p, size_t pages);

/// Allocates `pages` ring frames that never move, maps them contiguously at
/// `*mapping` (zeroed) and stores their frame numbers (what register_ring wants) in
/// `frames`. Returns 0 or -errno (-ENOMEM: the domain's memory limit has no room).
int cxa_frames_alloc(cxa_hypervisor *h, size_t pages, void **mapping, uint64_t *frames);
/// Unmaps frames from cxa_frames_alloc and gives them back (decrease_reservation on
/// PV). Only call this once no ring uses the frames any more. Returns 0 or -errno.
int cxa_frames_free(cxa_hypervisor *h, void *mapping, size_t pages, const uint64_t *frames);

/// XENMEM_current_reservation for DOMID_SELF: the pages this domain holds now
/// (Xen's tot_pages), or -errno. Ring frames from cxa_frames_alloc count here.
long cxa_current_reservation(cxa_hypervisor *h);

/// This domain's id: 0 for the control domain, else read from xenstore ("domid").
/// Returns the id (>= 0) or -errno.
int cxa_local_domid(void);

/// A connection to xenstore (libxenstore), for test tools that talk across domains
/// without Argo. NULL on failure (errno set).
typedef struct cxa_store cxa_store;
cxa_store *cxa_store_open(void);
void cxa_store_close(cxa_store *store);
/// Writes `value` at `path` (created with its parent's permissions). 0 or -errno.
int cxa_store_write(cxa_store *store, const char *path, const char *value);
/// Reads `path` into `buffer` (NUL-terminated, at most `size` - 1 bytes). The value's
/// length, or -errno (-ENOENT: no such node; -E2BIG: it does not fit).
long cxa_store_read(cxa_store *store, const char *path, char *buffer, size_t size);
/// Removes `path` and what is below it. 0 or -errno.
int cxa_store_remove(cxa_store *store, const char *path);

/// True if running on Xen (/sys/hypervisor/type says "xen").
int cxa_running_on_xen(void);
/// The privcmd module's "unrestricted" parameter: 1, 0, or -1 if unknown.
int cxa_privcmd_unrestricted(void);
/// 1 if this is the control domain (/proc/xen/capabilities has control_d), else 0.
int cxa_is_control_domain(void);

// ---- events ----------------------------------------------------------------------

typedef struct cxa_events cxa_events;

/// Opens /dev/xen/evtchn and binds VIRQ_ARGO. Returns 0 or -errno (-EEXIST: some other
/// user in this domain, e.g. xen-argo.ko, already bound it).
int cxa_events_open(cxa_events **out, unsigned int virq);
void cxa_events_close(cxa_events *e);
/// The event-channel file descriptor (readable when an event is pending).
int cxa_events_fd(const cxa_events *e);
/// Waits up to `timeout_ms` for an event or for cxa_events_wake(). Returns 1 if the
/// VIRQ fired (the port has been read and unmasked again), 0 on timeout or wake-up,
/// or -errno.
int cxa_events_wait(cxa_events *e, int timeout_ms);
/// Makes a concurrent cxa_events_wait return at once.
void cxa_events_wake(cxa_events *e);

#endif
