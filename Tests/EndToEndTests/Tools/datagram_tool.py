#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Datagram programs for the end-to-end tests of datagram mappings.

  receive --port P [--ack-every N] [--slow S] [--forever]
                                               numbered datagrams: checks order and
                                               contents, acks to the sender, prints a
                                               JSON summary when idle for 2 s (and goes
                                               on with --forever); datagram 0 starts a
                                               new run
  send --port P --count N --seed S [--window W --window-bytes B]
                                               numbered datagrams of random sizes
                                               (log-uniform 8..65507); with a window,
                                               waits for acks (a receiver that keeps up)
  rate --port P --size N --count C [--window W --ack-every A]
                                               datagrams of N bytes with at most W
                                               unacknowledged (a receiver that keeps up):
                                               prints "datagrams/s lost"
  echo (--port P | --unix PATH)                 answers each datagram with it in capitals
  seqpacket-echo --unix PATH                   a SEQPACKET server: each record back, as is;
                                               half-closes when the client does
  seqpacket-check --unix PATH --seed S         records of sizes 1..200,000 and back: each
                                               whole and in order, then a half-close
  dropstat                                     UDP receive-buffer drops of this network
                                               namespace (/proc/net/snmp RcvbufErrors)

A numbered datagram: 8-byte big-endian number, then bytes that are a function of the
number and the length, so that a cut, merged or corrupted datagram is seen. One of 1 to
7 bytes holds only the number's last bytes: the receiver expects the number after the
last one there (senders make them only for receivers that keep up).
"""
import argparse
import json
import math
import random
import socket
import struct
import sys
import time

LARGEST = 65507


def big_buffers(sock):
    """4 MiB each way, beyond net.core.rmem_max when root (SO_RCVBUFFORCE)."""
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, 4 << 20)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, 4 << 20)


def payload(number, size):
    if size < 8:
        return struct.pack(">Q", number)[8 - size:]
    head = struct.pack(">Q", number)
    body = bytes(((number * 31 + i) & 0xFF) for i in range(min(size - 8, 64)))
    filler = bytes([number & 0xFF]) * (size - 8 - len(body))
    return head + body + filler


def sizes(seed, count, smallest=8):
    rng = random.Random(seed)
    # The smallest and the largest, then log-uniform: every order of magnitude.
    drawn = [min(LARGEST, int(math.exp(rng.uniform(math.log(smallest), math.log(LARGEST + 1)))))
             for _ in range(count)]
    return ([smallest, LARGEST] + drawn)[:count]


def receive(args):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    big_buffers(sock)
    sock.bind(("127.0.0.1", args.port))
    print("listening", flush=True)
    state = {"received": 0, "last": -1, "bytes": 0}
    errors = []

    def take(data, address):
        if args.slow:
            time.sleep(args.slow)
        state["received"] += 1
        state["bytes"] += len(data)
        if len(data) < 8:
            # Only the last bytes of the number after the last one.
            expected = state["last"] + 1
            if data != payload(expected, len(data)):
                errors.append(f"a {len(data)}-byte datagram that is not number {expected}'s")
            state["last"] = expected
        else:
            number = struct.unpack(">Q", data[:8])[0]
            if number == 0 and state["received"] > 1:
                # A new run (a sender that starts at once after the last one ended).
                ended = {**state, "received": state["received"] - 1, "bytes": state["bytes"] - len(data)}
                print(json.dumps({**ended, "errors": errors[:20]}), flush=True)
                state.update(received=1, last=-1, bytes=len(data))
                errors.clear()
            if number <= state["last"]:
                errors.append(f"{number} after {state['last']}: out of order")
            if data != payload(number, len(data)):
                errors.append(f"datagram {number} of {len(data)} bytes is corrupt")
            state["last"] = number
        if args.ack_every and state["received"] % args.ack_every == 0:
            sock.sendto(struct.pack(">Q", state["received"]), address)

    while True:
        sock.settimeout(None)
        take(*sock.recvfrom(70000))
        sock.settimeout(2)
        try:
            while True:
                take(*sock.recvfrom(70000))
        except socket.timeout:
            print(json.dumps({**state, "errors": errors[:20]}), flush=True)
            if not args.forever:
                return 0
            state.update(received=0, last=-1, bytes=0)
            errors.clear()


def send(args):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    big_buffers(sock)
    sock.connect(("127.0.0.1", args.port))
    acked, sent, total = 0, 0, 0
    in_flight = []  # sizes of datagrams not acknowledged yet, oldest first
    deadline = time.monotonic() + args.timeout
    for number, size in enumerate(sizes(args.seed, args.count, args.smallest)):
        if args.window:
            while len(in_flight) >= args.window or (in_flight and sum(in_flight) + size > args.window_bytes):
                # An ack that does not come in 10 s was lost with its datagram.
                sock.settimeout(min(10, max(0.1, deadline - time.monotonic())))
                try:
                    data = sock.recv(64)
                except socket.timeout:
                    print(json.dumps({"sent": sent, "bytes": total, "acked": acked, "error": "no ack"}), flush=True)
                    return 1
                now_acked = struct.unpack(">Q", data[:8])[0]
                del in_flight[:now_acked - acked]
                acked = now_acked
        sock.send(payload(number, size))
        in_flight.append(size)
        sent += 1
        total += size
    print(json.dumps({"sent": sent, "bytes": total}), flush=True)
    return 0


def rate(args):
    """Numbered datagrams of one size through a window of acknowledgements (the
    receiver acknowledges its count of datagrams every --ack-every). Prints the rate of
    acknowledged datagrams and how many were lost (a lost one stalls the window for 2 s
    and ends the run)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    big_buffers(sock)
    sock.connect(("127.0.0.1", args.port))
    sock.settimeout(2)
    acked, sent = 0, 0
    start = time.monotonic()
    try:
        for number in range(args.count):
            while number - acked >= args.window:
                acked = max(acked, struct.unpack(">Q", sock.recv(64)[:8])[0])
            sock.send(payload(number, args.size))
            sent += 1
        expected = args.count - args.count % args.ack_every
        while acked < expected:
            acked = max(acked, struct.unpack(">Q", sock.recv(64)[:8])[0])
        elapsed = time.monotonic() - start
        lost = 0
    except socket.timeout:
        elapsed = time.monotonic() - start - 2
        lost = sent - acked
    print(f"{acked / elapsed:.0f} {lost}", flush=True)
    return 0


def echo(args):
    if args.unix:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(args.unix)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", args.port))
    print("listening", flush=True)
    while True:
        data, address = sock.recvfrom(70000)
        sock.sendto(data.upper(), address)


def seqpacket_echo(args):
    import threading
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(args.unix)
    server.listen(16)
    print("listening", flush=True)

    def serve(connection):
        with connection:
            while record := connection.recv(300000):
                connection.send(record)
            connection.shutdown(socket.SHUT_WR)

    while True:
        connection, _ = server.accept()
        threading.Thread(target=serve, args=(connection,), daemon=True).start()


def seqpacket_check(args):
    rng = random.Random(args.seed)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sock.settimeout(30)
    sock.connect(args.unix)
    # Every order of magnitude, and the largest a default socket takes.
    sizes = [1, 2, 3, 100, 4096, 65536, 65537, 200000] + [
        int(math.exp(rng.uniform(0, math.log(200000)))) for _ in range(200)]
    errors = []
    for number, size in enumerate(sizes):
        sock.send(bytes([number & 0xFF]) * size)
        record = sock.recv(300000)
        if record != bytes([number & 0xFF]) * size:
            errors.append(f"record {number}: sent {size} bytes, got {len(record)}")
    # Several in flight at once keep their boundaries too.
    for number, size in enumerate(sizes[:20]):
        sock.send(bytes([number & 0xFF]) * size)
    for number, size in enumerate(sizes[:20]):
        record = sock.recv(300000)
        if record != bytes([number & 0xFF]) * size:
            errors.append(f"pipelined record {number}: sent {size} bytes, got {len(record)}")
    sock.shutdown(socket.SHUT_WR)
    end = sock.recv(10)
    print(json.dumps({"records": len(sizes) + 20, "eof": end == b"", "errors": errors[:10]}), flush=True)
    return 0


def dropstat(_args):
    with open("/proc/net/snmp") as snmp:
        lines = [line.split() for line in snmp if line.startswith("Udp:")]
    fields = dict(zip(lines[0][1:], lines[1][1:]))
    print(fields["RcvbufErrors"])
    return 0


def main():
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("receive")
    command.add_argument("--port", type=int, required=True)
    command.add_argument("--ack-every", type=int, default=0)
    command.add_argument("--slow", type=float, default=0)
    command.add_argument("--forever", action="store_true")
    command = commands.add_parser("send")
    command.add_argument("--port", type=int, required=True)
    command.add_argument("--count", type=int, required=True)
    command.add_argument("--seed", type=int, default=1)
    command.add_argument("--window", type=int, default=0)
    command.add_argument("--window-bytes", type=int, default=1 << 30)
    command.add_argument("--smallest", type=int, default=8, help="1 only for a receiver that keeps up")
    command.add_argument("--timeout", type=float, default=240)
    command = commands.add_parser("rate")
    command.add_argument("--port", type=int, required=True)
    command.add_argument("--size", type=int, required=True)
    command.add_argument("--count", type=int, required=True)
    command.add_argument("--window", type=int, default=256)
    command.add_argument("--ack-every", type=int, default=8)
    command = commands.add_parser("echo")
    command.add_argument("--port", type=int, default=0)
    command.add_argument("--unix")
    command = commands.add_parser("seqpacket-echo")
    command.add_argument("--unix", required=True)
    command = commands.add_parser("seqpacket-check")
    command.add_argument("--unix", required=True)
    command.add_argument("--seed", type=int, default=1)
    commands.add_parser("dropstat")
    args = parser.parse_args()
    return {"receive": receive, "send": send, "rate": rate, "echo": echo,
            "seqpacket-echo": seqpacket_echo, "seqpacket-check": seqpacket_check, "dropstat": dropstat}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
