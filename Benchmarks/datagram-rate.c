// SPDX-License-Identifier: Apache-2.0
// Numbered UDP datagrams through a window of acknowledgements, at the speed of C (the
// same protocol as the tests' datagram_tool.py `rate` and `receive`, which measure a
// Python application as much as the path between). Loopback only.
//
//   datagram-rate receive PORT ACK_EVERY
//       binds 127.0.0.1:PORT; checks every datagram (its number, ascending, and its
//       contents); every ACK_EVERY-th sends the count received so far (8 bytes, big
//       endian) back to its source; datagram number 0, or 2 s without datagrams,
//       starts a new run.
//   datagram-rate send PORT SIZE COUNT WINDOW ACK_EVERY
//       sends COUNT datagrams of SIZE bytes (8..65507) to 127.0.0.1:PORT with at most
//       WINDOW unacknowledged; prints "DATAGRAMS_PER_SECOND LOST" (an acknowledgement
//       that does not come within 2 s ends the run, the datagrams not acknowledged
//       counted lost, the rate up to the last acknowledgement). A warm-up of
//       ACK_EVERY datagrams comes first.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { batch = 64, largest = 65507 };

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

// datagram_tool.py's payload: the number (8 bytes, big endian), up to 64 bytes of
// (number * 31 + i) & 0xFF, then number & 0xFF.
static void payload(uint64_t number, size_t size, unsigned char *out) {
    for (int i = 0; i < 8; i++) out[i] = (unsigned char)(number >> (56 - 8 * i));
    size_t body = size - 8 < 64 ? size - 8 : 64;
    for (size_t i = 0; i < body; i++) out[8 + i] = (unsigned char)((number * 31 + i) & 0xFF);
    memset(out + 8 + body, (int)(number & 0xFF), size - 8 - body);
}

static uint64_t number_of(const unsigned char *data) {
    uint64_t number = 0;
    for (int i = 0; i < 8; i++) number = number << 8 | data[i];
    return number;
}

static int socket_to(int port, int bind_it) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); exit(1); }
    int size = 4 << 20;
    // SO_RCVBUFFORCE / SO_SNDBUFFORCE as root, else what net.core.*mem_max allows.
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) != 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port)};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if ((bind_it ? bind(fd, (struct sockaddr *)&address, sizeof address)
                 : connect(fd, (struct sockaddr *)&address, sizeof address)) != 0) {
        perror(bind_it ? "bind" : "connect");
        exit(1);
    }
    return fd;
}

static int receive(int port, uint64_t ack_every) {
    int fd = socket_to(port, 1);
    static unsigned char buffers[batch][largest + 1];
    static unsigned char expected[largest];
    struct mmsghdr messages[batch];
    struct iovec vectors[batch];
    struct sockaddr_in sources[batch];
    printf("listening\n");
    fflush(stdout);
    uint64_t received = 0, errors = 0;
    int64_t last = -1;
    for (;;) {
        struct pollfd ready = {.fd = fd, .events = POLLIN};
        int timeout = received ? 2000 : -1;
        if (poll(&ready, 1, timeout) == 0) {
            printf("{\"received\": %llu, \"errors\": %llu}\n", (unsigned long long)received,
                   (unsigned long long)errors);
            fflush(stdout);
            received = 0, errors = 0, last = -1;
            continue;
        }
        for (int i = 0; i < batch; i++) {
            vectors[i] = (struct iovec){.iov_base = buffers[i], .iov_len = sizeof buffers[i]};
            messages[i].msg_hdr = (struct msghdr){.msg_name = &sources[i], .msg_namelen = sizeof sources[i],
                                                  .msg_iov = &vectors[i], .msg_iovlen = 1};
        }
        int count = recvmmsg(fd, messages, batch, MSG_DONTWAIT, NULL);
        if (count < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            perror("recvmmsg");
            return 1;
        }
        for (int i = 0; i < count; i++) {
            size_t size = messages[i].msg_len;
            if (size < 8) { errors++; continue; }
            uint64_t number = number_of(buffers[i]);
            if (number == 0) received = 0, last = -1;  // a new run
            if ((int64_t)number <= last) errors++;
            payload(number, size, expected);
            if (memcmp(expected, buffers[i], size) != 0) errors++;
            last = (int64_t)number;
            received++;
            if (ack_every && received % ack_every == 0) {
                unsigned char ack[8];
                for (int b = 0; b < 8; b++) ack[b] = (unsigned char)(received >> (56 - 8 * b));
                sendto(fd, ack, sizeof ack, 0, (struct sockaddr *)&sources[i], messages[i].msg_hdr.msg_namelen);
            }
        }
    }
}

// One run: numbers 0..count-1 (number 0 starts a new run at the receiver). Sets the rate
// of acknowledged datagrams (up to the last acknowledgement) and how many were sent but
// not acknowledged when an acknowledgement did not come within 2 s.
static void run(int fd, size_t size, uint64_t count, uint64_t window, uint64_t ack_every, double *rate,
                uint64_t *lost) {
    static unsigned char buffers[batch][largest];
    struct mmsghdr messages[batch];
    struct iovec vectors[batch];
    uint64_t sent = 0, acked = 0;
    uint64_t expected = count - count % ack_every;
    double start = now(), progress = start;
    *lost = 0;
    while (acked < expected) {
        // As many as the window allows, in batches.
        int ready = 0;
        while (sent + ready < count && sent + ready - acked < window && ready < batch) {
            payload(sent + ready, size, buffers[ready]);
            vectors[ready] = (struct iovec){.iov_base = buffers[ready], .iov_len = size};
            messages[ready].msg_hdr = (struct msghdr){.msg_iov = &vectors[ready], .msg_iovlen = 1};
            ready++;
        }
        int done = 0;
        while (done < ready) {
            int n = sendmmsg(fd, messages + done, ready - done, 0);
            if (n < 0) {
                if (errno == EINTR || errno == ECONNREFUSED) continue;
                perror("sendmmsg");
                exit(1);
            }
            done += n;
        }
        sent += ready;
        if (ready == batch && sent - acked < window) continue;
        // Wait for acknowledgements (all of them that are there).
        struct pollfd readable = {.fd = fd, .events = POLLIN};
        if (poll(&readable, 1, 2000) == 0) {
            *lost = sent - acked;
            break;
        }
        unsigned char ack[64];
        while (recv(fd, ack, sizeof ack, MSG_DONTWAIT) >= 8) {
            uint64_t value = number_of(ack);
            if (value > acked) acked = value, progress = now();
        }
    }
    *rate = progress > start ? acked / (progress - start) : 0;
}

static int send_all(int port, size_t size, uint64_t count, uint64_t window, uint64_t ack_every) {
    int fd = socket_to(port, 0);
    double rate;
    uint64_t lost = 1;
    // A warm-up of one window's worth first (relays that fork a process per client, as
    // socat does, lose datagrams while they start), at most 5 tries.
    for (int try = 0; try < 5 && lost; try++) run(fd, size, ack_every, ack_every, ack_every, &rate, &lost);
    run(fd, size, count, window, ack_every, &rate, &lost);
    printf("%.0f %llu\n", rate, (unsigned long long)lost);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "receive") == 0) return receive(atoi(argv[2]), strtoull(argv[3], NULL, 10));
    if (argc == 7 && strcmp(argv[1], "send") == 0) {
        size_t size = strtoull(argv[3], NULL, 10);
        uint64_t ack_every = strtoull(argv[6], NULL, 10);
        if (size < 8 || size > largest || ack_every == 0) return 2;
        return send_all(atoi(argv[2]), size, strtoull(argv[4], NULL, 10), strtoull(argv[5], NULL, 10), ack_every);
    }
    fprintf(stderr, "usage: %s receive PORT ACK_EVERY | send PORT SIZE COUNT WINDOW ACK_EVERY\n", argv[0]);
    return 2;
}
