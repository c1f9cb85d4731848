// SPDX-License-Identifier: Apache-2.0
// See include/cxen_argo.h for what this file does and why.
#define _GNU_SOURCE
#define __XEN_TOOLS__ 1
#include "cxen_argo.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xen/xen.h>
#include <xen/memory.h>
#include <xencall.h>
#include <xenevtchn.h>
#include <xenforeignmemory.h>
#include <xenstore.h>
#include <xentoollog.h>

struct cxa_hypervisor {
    xencall_handle *call;
    xenforeignmemory_handle *fmem;  // only for CXA_FRAMES_RESERVATION
    xentoollog_logger_stdiostream *logger;
    cxa_frame_method method;
    char guest_type[16];
};

struct cxa_events {
    xenevtchn_handle *xce;
    xentoollog_logger_stdiostream *logger;
    xenevtchn_port_or_error_t port;
    int wake_fd;
};

static int read_small_file(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    ssize_t n = read(fd, buf, size - 1);
    int saved = errno;
    close(fd);
    if (n < 0) return -saved;
    buf[n] = 0;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = 0;
    return (int)n;
}

int cxa_running_on_xen(void) {
    char buf[16];
    return read_small_file("/sys/hypervisor/type", buf, sizeof buf) > 0 && strcmp(buf, "xen") == 0;
}

int cxa_privcmd_unrestricted(void) {
    char buf[8];
    if (read_small_file("/sys/module/xen_privcmd/parameters/unrestricted", buf, sizeof buf) <= 0) return -1;
    return buf[0] == 'Y' || buf[0] == '1';
}

int cxa_is_control_domain(void) {
    char buf[128];
    return read_small_file("/proc/xen/capabilities", buf, sizeof buf) > 0 && strstr(buf, "control_d") != NULL;
}

struct cxa_store {
    struct xs_handle *xs;
};

cxa_store *cxa_store_open(void) {
    struct xs_handle *xs = xs_open(0);
    if (!xs) return NULL;
    cxa_store *store = calloc(1, sizeof *store);
    if (!store) {
        xs_close(xs);
        errno = ENOMEM;
        return NULL;
    }
    store->xs = xs;
    return store;
}

void cxa_store_close(cxa_store *store) {
    if (!store) return;
    xs_close(store->xs);
    free(store);
}

int cxa_store_write(cxa_store *store, const char *path, const char *value) {
    if (!xs_write(store->xs, XBT_NULL, path, value, (unsigned int)strlen(value))) return -(errno ? errno : EIO);
    return 0;
}

long cxa_store_read(cxa_store *store, const char *path, char *buffer, size_t size) {
    unsigned int len = 0;
    char *value = xs_read(store->xs, XBT_NULL, path, &len);
    if (!value) return -(errno ? errno : ENOENT);
    long result = len;
    if ((size_t)len + 1 > size) {
        result = -E2BIG;
    } else {
        memcpy(buffer, value, len);
        buffer[len] = 0;
    }
    free(value);
    return result;
}

int cxa_store_remove(cxa_store *store, const char *path) {
    if (!xs_rm(store->xs, XBT_NULL, path)) return -(errno ? errno : EIO);
    return 0;
}

int cxa_local_domid(void) {
    if (cxa_is_control_domain()) return 0;
    struct xs_handle *xs = xs_open(0);
    if (!xs) return -(errno ? errno : ENOENT);
    unsigned int len = 0;
    char *value = xs_read(xs, XBT_NULL, "domid", &len);
    int saved = errno;
    xs_close(xs);
    if (!value) return -(saved ? saved : ENOENT);
    char *end = NULL;
    long id = strtol(value, &end, 10);
    int bad = end == value || *end != 0 || id < 0 || id >= DOMID_FIRST_RESERVED;
    free(value);
    return bad ? -EINVAL : (int)id;
}

int cxa_open(cxa_hypervisor **out, char *message, size_t size) {
    *out = NULL;
    if (size) message[0] = 0;
    cxa_hypervisor *h = calloc(1, sizeof *h);
    if (!h) return -ENOMEM;
    char type[16] = "unknown";
    if (read_small_file("/sys/hypervisor/guest_type", type, sizeof type) <= 0) strcpy(type, "unknown");
    snprintf(h->guest_type, sizeof h->guest_type, "%s", type);
    // PV (and an unknown type, which on the kernels we target means an old PV-only
    // sysfs) needs machine frames; auto-translated guests use pseudo-physical ones.
    h->method = (strcmp(type, "HVM") == 0 || strcmp(type, "PVH") == 0) ? CXA_FRAMES_PAGEMAP : CXA_FRAMES_RESERVATION;
    if (h->method == CXA_FRAMES_PAGEMAP) {
        // libxencall quietly falls back to anonymous locked memory when it cannot open
        // /dev/xen/hypercall (for these errnos). Locked anonymous pages can still be
        // migrated by the kernel (compaction), and Xen would keep writing a ring's
        // messages to the frame the page left. Refuse instead of risking that.
        int fd = open("/dev/xen/hypercall", O_RDWR | O_CLOEXEC);
        int saved = errno;
        if (fd < 0 && (saved == ENOENT || saved == ENXIO || saved == ENODEV)) {
            snprintf(message, size,
                     "/dev/xen/hypercall: %s; a %s guest's rings need its pages (Linux 4.18 or later, "
                     "module xen_privcmd, devtmpfs on /dev)",
                     strerror(saved), h->guest_type);
            cxa_close(h);
            return -saved;
        }
        if (fd >= 0) close(fd);
    }
    // Quiet logger: the Swift side turns errno values into diagnostics itself.
    h->logger = xtl_createlogger_stdiostream(stderr, XTL_CRITICAL, 0);
    h->call = xencall_open((xentoollog_logger *)h->logger, 0);
    if (!h->call) {
        int saved = errno ? errno : ENOENT;
        snprintf(message, size, "xencall_open: %s", strerror(saved));
        cxa_close(h);
        return -saved;
    }
    if (h->method == CXA_FRAMES_RESERVATION) {
        h->fmem = xenforeignmemory_open((xentoollog_logger *)h->logger, 0);
        if (!h->fmem) {
            int saved = errno ? errno : ENOENT;
            snprintf(message, size, "xenforeignmemory_open: %s", strerror(saved));
            cxa_close(h);
            return -saved;
        }
    }
    *out = h;
    return 0;
}

void cxa_close(cxa_hypervisor *h) {
    if (!h) return;
    if (h->fmem) xenforeignmemory_close(h->fmem);
    if (h->call) xencall_close(h->call);
    if (h->logger) xtl_logger_destroy((xentoollog_logger *)h->logger);
    free(h);
}

cxa_frame_method cxa_frame_method_of(const cxa_hypervisor *h) { return h->method; }
const char *cxa_guest_type(const cxa_hypervisor *h) { return h->guest_type; }

long cxa_argo_op(cxa_hypervisor *h, unsigned int cmd, uint64_t arg1, uint64_t arg2, uint64_t arg3, uint64_t arg4) {
    // privcmd returns -1 and sets errno to the hypercall's -result.
    int rc = xencall5(h->call, __HYPERVISOR_argo_op, cmd, arg1, arg2, arg3, arg4);
    if (rc < 0) return -(long)(errno ? errno : EIO);
    return rc;
}

void *cxa_buffer_alloc(cxa_hypervisor *h, size_t pages) {
    void *p = xencall_alloc_buffer_pages(h->call, pages);
    if (p) memset(p, 0, pages * 4096);
    return p;
}

void cxa_buffer_free(cxa_hypervisor *h, void *p, size_t pages) {
    if (p) xencall_free_buffer_pages(h->call, p, pages);
}

// XENMEM_{increase,decrease}_reservation for DOMID_SELF on `count` single frames.
static long reservation_op(cxa_hypervisor *h, unsigned int op, xen_pfn_t *frames, size_t count) {
    struct xen_memory_reservation *res = xencall_alloc_buffer(h->call, sizeof *res);
    xen_pfn_t *list = xencall_alloc_buffer(h->call, count * sizeof *list);
    long rc;
    if (!res || !list) {
        rc = -ENOMEM;
    } else {
        memset(res, 0, sizeof *res);
        memcpy(list, frames, count * sizeof *list);
        set_xen_guest_handle(res->extent_start, list);
        res->nr_extents = count;
        res->extent_order = 0;
        res->mem_flags = 0;
        res->domid = DOMID_SELF;
        int r = xencall2(h->call, __HYPERVISOR_memory_op, op, (uint64_t)(uintptr_t)res);
        rc = r < 0 ? -(long)(errno ? errno : EIO) : r;
        memcpy(frames, list, count * sizeof *list);
    }
    if (list) xencall_free_buffer(h->call, list);
    if (res) xencall_free_buffer(h->call, res);
    return rc;
}

long cxa_current_reservation(cxa_hypervisor *h) {
    domid_t *domid = xencall_alloc_buffer(h->call, sizeof *domid);
    if (!domid) return -ENOMEM;
    *domid = DOMID_SELF;
    int r = xencall2(h->call, __HYPERVISOR_memory_op, XENMEM_current_reservation, (uint64_t)(uintptr_t)domid);
    long rc = r < 0 ? -(long)(errno ? errno : EIO) : r;
    xencall_free_buffer(h->call, domid);
    return rc;
}

static int frames_alloc_reservation(cxa_hypervisor *h, size_t pages, void **mapping, uint64_t *frames) {
    xen_pfn_t *mfns = calloc(pages, sizeof *mfns);
    int *errs = calloc(pages, sizeof *errs);
    if (!mfns || !errs) {
        free(mfns);
        free(errs);
        return -ENOMEM;
    }
    long got = reservation_op(h, XENMEM_increase_reservation, mfns, pages);
    if (got < 0 || (size_t)got != pages) {
        // A partial grant: give back what we got. The domain's max_pages has no room.
        if (got > 0) reservation_op(h, XENMEM_decrease_reservation, mfns, (size_t)got);
        free(mfns);
        free(errs);
        return got < 0 ? (int)got : -ENOMEM;
    }
    void *p = xenforeignmemory_map(h->fmem, DOMID_SELF, PROT_READ | PROT_WRITE, pages, mfns, errs);
    int rc = 0;
    if (!p) {
        rc = -(errno ? errno : EFAULT);
    } else {
        for (size_t i = 0; i < pages; i++) {
            if (errs[i]) {
                rc = errs[i] < 0 ? errs[i] : -errs[i];
                break;
            }
        }
        if (rc) xenforeignmemory_unmap(h->fmem, p, pages);
    }
    if (rc) {
        reservation_op(h, XENMEM_decrease_reservation, mfns, pages);
    } else {
        memset(p, 0, pages * 4096);
        for (size_t i = 0; i < pages; i++) frames[i] = mfns[i];
        *mapping = p;
    }
    free(mfns);
    free(errs);
    return rc;
}

static int frames_alloc_pagemap(cxa_hypervisor *h, size_t pages, void **mapping, uint64_t *frames) {
    void *p = cxa_buffer_alloc(h, pages);  // zeroed, hence present
    if (!p) return -(errno ? errno : ENOMEM);
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    int rc = fd < 0 ? -errno : 0;
    for (size_t i = 0; rc == 0 && i < pages; i++) {
        uint64_t entry = 0;
        uintptr_t va = (uintptr_t)p + i * 4096;
        if (pread(fd, &entry, sizeof entry, (off_t)(va / 4096 * sizeof entry)) != sizeof entry) {
            rc = -(errno ? errno : EIO);
        } else if (!(entry >> 63 & 1)) {
            rc = -EFAULT;
        } else {
            uint64_t pfn = entry & ((1ULL << 55) - 1);
            // Without CAP_SYS_ADMIN the kernel reports PFN 0.
            if (pfn == 0) rc = -EPERM;
            frames[i] = pfn;
        }
    }
    if (fd >= 0) close(fd);
    if (rc) {
        cxa_buffer_free(h, p, pages);
        return rc;
    }
    *mapping = p;
    return 0;
}

int cxa_frames_alloc(cxa_hypervisor *h, size_t pages, void **mapping, uint64_t *frames) {
    if (pages == 0) return -EINVAL;
    return h->method == CXA_FRAMES_RESERVATION ? frames_alloc_reservation(h, pages, mapping, frames)
                                               : frames_alloc_pagemap(h, pages, mapping, frames);
}

int cxa_frames_free(cxa_hypervisor *h, void *mapping, size_t pages, const uint64_t *frames) {
    if (h->method == CXA_FRAMES_PAGEMAP) {
        cxa_buffer_free(h, mapping, pages);
        return 0;
    }
    int rc = xenforeignmemory_unmap(h->fmem, mapping, pages) < 0 ? -errno : 0;
    xen_pfn_t *mfns = calloc(pages, sizeof *mfns);
    if (!mfns) return -ENOMEM;
    for (size_t i = 0; i < pages; i++) mfns[i] = frames[i];
    long freed = reservation_op(h, XENMEM_decrease_reservation, mfns, pages);
    free(mfns);
    if (rc) return rc;
    if (freed < 0) return (int)freed;
    return (size_t)freed == pages ? 0 : -EBUSY;
}

// ---- events ----------------------------------------------------------------------

int cxa_events_open(cxa_events **out, unsigned int virq) {
    *out = NULL;
    cxa_events *e = calloc(1, sizeof *e);
    if (!e) return -ENOMEM;
    e->wake_fd = -1;
    e->port = -1;
    e->logger = xtl_createlogger_stdiostream(stderr, XTL_CRITICAL, 0);
    e->xce = xenevtchn_open((xentoollog_logger *)e->logger, 0);
    if (!e->xce) {
        int saved = errno ? errno : ENOENT;
        cxa_events_close(e);
        return -saved;
    }
    e->port = xenevtchn_bind_virq(e->xce, virq);
    if (e->port < 0) {
        int saved = errno ? errno : EINVAL;
        cxa_events_close(e);
        return -saved;
    }
    int fd = xenevtchn_fd(e->xce);
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    e->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (e->wake_fd < 0) {
        int saved = errno;
        cxa_events_close(e);
        return -saved;
    }
    *out = e;
    return 0;
}

void cxa_events_close(cxa_events *e) {
    if (!e) return;
    if (e->xce) {
        if (e->port >= 0) xenevtchn_unbind(e->xce, (evtchn_port_t)e->port);
        xenevtchn_close(e->xce);
    }
    if (e->wake_fd >= 0) close(e->wake_fd);
    if (e->logger) xtl_logger_destroy((xentoollog_logger *)e->logger);
    free(e);
}

int cxa_events_fd(const cxa_events *e) { return xenevtchn_fd(e->xce); }

int cxa_events_wait(cxa_events *e, int timeout_ms) {
    struct pollfd fds[2] = {
        {.fd = xenevtchn_fd(e->xce), .events = POLLIN},
        {.fd = e->wake_fd, .events = POLLIN},
    };
    int n = poll(fds, 2, timeout_ms);
    if (n < 0) return errno == EINTR ? 0 : -errno;
    if (fds[1].revents & POLLIN) {
        uint64_t v;
        if (read(e->wake_fd, &v, sizeof v) < 0 && errno != EAGAIN) return -errno;
    }
    int fired = 0;
    if (fds[0].revents & (POLLIN | POLLERR | POLLHUP)) {
        // Drain every pending port; each delivered port is masked until unmasked.
        for (int i = 0; i < 64; i++) {
            xenevtchn_port_or_error_t port = xenevtchn_pending(e->xce);
            if (port < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                return -errno;
            }
            if (xenevtchn_unmask(e->xce, (evtchn_port_t)port) < 0) return -errno;
            if (port == e->port) fired = 1;
        }
    }
    return fired;
}

void cxa_events_wake(cxa_events *e) {
    uint64_t one = 1;
    ssize_t ignored = write(e->wake_fd, &one, sizeof one);
    (void)ignored;
}
