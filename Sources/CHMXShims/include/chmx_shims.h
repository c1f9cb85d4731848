// SPDX-License-Identifier: Apache-2.0
// Small C helpers for what Swift cannot express directly on Linux: atomic
// accesses to ring indices that live in memory mapped from another process,
// memfd sealing, and file-descriptor passing over Unix sockets.
#ifndef CHMX_SHIMS_H
#define CHMX_SHIMS_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

/// Acquire-load of a 32-bit ring index (Argo's tx_ptr / rx_ptr).
static inline uint32_t chmx_load_acquire_u32(const void *p) {
    return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE);
}

/// Release-store of a 32-bit ring index.
static inline void chmx_store_release_u32(void *p, uint32_t v) {
    __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELEASE);
}

/// Full memory barrier (Linux's mb()).
static inline void chmx_full_fence(void) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/// memfd_create with MFD_CLOEXEC | MFD_ALLOW_SEALING. Returns -1 and sets errno on failure.
int chmx_memfd_create(const char *name);

/// Seals a memfd against shrinking, growing and further sealing.
int chmx_memfd_seal(int fd);

/// Returns 1 if `fd` is a memfd sealed against shrink and grow, 0 if not, -1 on error.
int chmx_memfd_is_sealed(int fd);

/// Sends `len` bytes and up to `nfds` descriptors in one sendmsg (SCM_RIGHTS).
ssize_t chmx_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);

/// Receives up to `len` bytes and up to `maxfds` descriptors. `*nfds` is set to the
/// number received. Descriptors arrive close-on-exec. Truncated control data is an error (EBADMSG).
ssize_t chmx_recv_with_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds);

/// Peer credentials of a connected Unix socket.
int chmx_peer_credentials(int sock, pid_t *pid, uid_t *uid, gid_t *gid);

/// Sets SO_RCVTIMEO / SO_SNDTIMEO in milliseconds.
int chmx_set_socket_timeouts(int sock, int millis);

/// Sets glibc's mmap and trim thresholds (bytes); 0 on success, -1 where unsupported.
int chmx_set_malloc_thresholds(int mmap_threshold, int trim_threshold);

#endif

#ifndef CHMX_SHIMS_EXTRA
#define CHMX_SHIMS_EXTRA
/// pipe2(O_CLOEXEC | O_NONBLOCK).
int chmx_pipe_cloexec_nonblock(int fds[2]);
/// accept4(SOCK_NONBLOCK | SOCK_CLOEXEC) without the peer address.
int chmx_accept_nonblock_cloexec(int fd);
/// Sets O_NONBLOCK on a descriptor.
int chmx_set_nonblocking(int fd);
/// A close-on-exec AF_UNIX SOCK_STREAM socket.
int chmx_unix_stream_socket(void);

/* A Unix datagram socket bound to a kernel-chosen abstract name (so that a peer can
   answer it), non-blocking, close-on-exec; -1 with errno on failure. */
int chmx_unix_dgram_autobind(void);

/* A listening Unix SEQPACKET socket at path (non-blocking, close-on-exec); -1 with
   errno on failure. */
int chmx_unix_seqpacket_listen(const char *path, int backlog);

/* A Unix SEQPACKET socket connected to path (non-blocking, close-on-exec; a Unix
   socket's connect completes at once or fails); -1 with errno on failure. */
int chmx_unix_seqpacket_connect(const char *path);
/// setresuid(2) and setresgid(2) with all three ids (all threads, as glibc does
/// them): 0 or -1 with errno.
int chmx_setresuid(uid_t uid);
int chmx_setresgid(gid_t gid);

#endif
