// SPDX-License-Identifier: Apache-2.0
#define _GNU_SOURCE
#include "chmx_shims.h"

#include <errno.h>
#include <fcntl.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

int chmx_memfd_create(const char *name) {
    return memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
}

int chmx_memfd_seal(int fd) {
    return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
}

int chmx_memfd_is_sealed(int fd) {
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0) {
        return -1;
    }
    const int need = F_SEAL_SHRINK | F_SEAL_GROW;
    return (seals & need) == need ? 1 : 0;
}

#define CHMX_MAX_FDS 4

ssize_t chmx_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    if (nfds < 0 || nfds > CHMX_MAX_FDS) {
        errno = EINVAL;
        return -1;
    }
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * CHMX_MAX_FDS)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t rc;
    do {
        rc = sendmsg(sock, &msg, MSG_NOSIGNAL);
    } while (rc < 0 && errno == EINTR);
    return rc;
}

ssize_t chmx_recv_with_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds) {
    *nfds = 0;
    if (maxfds < 0 || maxfds > CHMX_MAX_FDS) {
        errno = EINVAL;
        return -1;
    }
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * CHMX_MAX_FDS)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    ssize_t rc;
    do {
        rc = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) {
        return rc;
    }
    int got = 0;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
            size_t n = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int *data = (int *)CMSG_DATA(cmsg);
            for (size_t i = 0; i < n; i++) {
                if (got < maxfds) {
                    fds[got++] = data[i];
                } else {
                    close(data[i]);
                }
            }
        }
    }
    *nfds = got;
    if (msg.msg_flags & MSG_CTRUNC) {
        for (int i = 0; i < got; i++) {
            close(fds[i]);
        }
        *nfds = 0;
        errno = EBADMSG;
        return -1;
    }
    return rc;
}

int chmx_peer_credentials(int sock, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        return -1;
    }
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

int chmx_set_socket_timeouts(int sock, int millis) {
    struct timeval tv = {.tv_sec = millis / 1000, .tv_usec = (millis % 1000) * 1000};
    if (setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0) {
        return -1;
    }
    return setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

int chmx_pipe_cloexec_nonblock(int fds[2]) {
    return pipe2(fds, O_CLOEXEC | O_NONBLOCK);
}

int chmx_accept_nonblock_cloexec(int fd) {
    int rc;
    do {
        rc = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    } while (rc < 0 && errno == EINTR);
    return rc;
}

int chmx_set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) {
        return -1;
    }
    return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

int chmx_unix_stream_socket(void) {
    return socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
}

/* Fills a sockaddr_un for path; -1 (ENAMETOOLONG) if it does not fit. */
static int chmx_unix_address(const char *path, struct sockaddr_un *address) {
    size_t length = strlen(path);
    if (length >= sizeof(address->sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memset(address, 0, sizeof(*address));
    address->sun_family = AF_UNIX;
    memcpy(address->sun_path, path, length);
    return 0;
}

int chmx_unix_seqpacket_listen(const char *path, int backlog) {
    struct sockaddr_un address;
    if (chmx_unix_address(path, &address) != 0) return -1;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&address, sizeof(address)) != 0 || listen(fd, backlog) != 0) {
        int error = errno;
        close(fd);
        errno = error;
        return -1;
    }
    return fd;
}

int chmx_unix_seqpacket_connect(const char *path) {
    struct sockaddr_un address;
    if (chmx_unix_address(path, &address) != 0) return -1;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&address, sizeof(address)) != 0) {
        int error = errno;
        close(fd);
        errno = error;
        return -1;
    }
    return fd;
}

int chmx_unix_dgram_autobind(void) {
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    struct sockaddr_un address;
    memset(&address, 0, sizeof(address));
    address.sun_family = AF_UNIX;
    /* Only the family: the kernel picks a unique abstract name (autobind). */
    if (bind(fd, (struct sockaddr *)&address, sizeof(sa_family_t)) != 0) {
        int error = errno;
        close(fd);
        errno = error;
        return -1;
    }
    return fd;
}

int chmx_set_malloc_thresholds(int mmap_threshold, int trim_threshold) {
#if defined(__GLIBC__)
    if (mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1) return -1;
    if (mallopt(M_TRIM_THRESHOLD, trim_threshold) != 1) return -1;
    return 0;
#else
    (void)mmap_threshold;
    (void)trim_threshold;
    return -1;
#endif
}

int chmx_setresuid(uid_t uid) { return setresuid(uid, uid, uid); }

int chmx_setresgid(gid_t gid) { return setresgid(gid, gid, gid); }
