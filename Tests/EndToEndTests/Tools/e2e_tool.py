#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Small servers and clients for the gateway's end-to-end tests (loopback only).

Every command is bounded in time and prints one result line; the exit status is 0
only when the behaviour it checks held.
"""
import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import sys
import time

PATTERN = bytes((i * 7 + 3) % 251 for i in range(65536))
PATTERN2 = PATTERN + PATTERN


def say(*words):
    print(*words, flush=True)


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pattern_matches(offset, chunk):
    """Whether chunk is the source pattern starting at stream offset `offset`."""
    position = 0
    while position < len(chunk):
        start = (offset + position) % 65536
        length = min(65536, len(chunk) - position)
        if chunk[position:position + length] != PATTERN2[start:start + length]:
            return False
        position += length
    return True


# ---- servers ---------------------------------------------------------------

async def echo_server(args):
    """Echoes every connection; after the client's EOF, half-closes. With
    --reply-after-eof S it instead collects everything, waits S seconds after the
    client's EOF, then sends it all back and closes."""

    async def handle(reader, writer):
        received = 0
        reason = "eof"
        try:
            if args.reply_after_eof is not None:
                data = bytearray()
                while chunk := await reader.read(1 << 16):
                    data += chunk
                received = len(data)
                await asyncio.sleep(args.reply_after_eof)
                writer.write(bytes(data))
                await writer.drain()
            else:
                while chunk := await reader.read(1 << 16):
                    received += len(chunk)
                    writer.write(chunk)
                    await writer.drain()
            writer.write_eof()
            await writer.drain()
        except (ConnectionError, OSError) as error:
            reason = f"error {type(error).__name__}"
        finally:
            writer.close()
            say(f"closed {reason} after {received} bytes")

    raise_fd_limit()
    server = await asyncio.start_server(handle, "127.0.0.1", args.port, backlog=2048, limit=1 << 16)
    say("listening", args.port)
    async with server:
        await server.serve_forever()


async def source_server(args):
    """Sends the endless test pattern to every connection until it goes away."""

    async def handle(reader, writer):
        sent = 0
        try:
            while True:
                writer.write(PATTERN)
                sent += len(PATTERN)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            say(f"closed after {sent} bytes")

    server = await asyncio.start_server(handle, "127.0.0.1", args.port, backlog=128)
    say("listening", args.port)
    async with server:
        await server.serve_forever()


PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def parse_proxy_v2(data):
    """Parses a PROXY v2 header at the start of `data`. Returns (fields, header
    length), (None, 0) if more bytes are needed; raises ValueError if malformed."""
    if len(data) < 16:
        if not PROXY_V2_SIGNATURE.startswith(bytes(data[:12])):
            raise ValueError("no PROXY v2 signature")
        return None, 0
    if bytes(data[:12]) != PROXY_V2_SIGNATURE:
        raise ValueError("no PROXY v2 signature")
    version_command, family = data[12], data[13]
    if version_command != 0x21:
        raise ValueError(f"version/command 0x{version_command:02x}, expected 0x21 (v2 PROXY)")
    length = int.from_bytes(data[14:16], "big")
    if len(data) < 16 + length:
        return None, 0
    body = bytes(data[16:16 + length])
    fields = {"family": family}
    if family >> 4 == 1:  # AF_INET
        if length < 12:
            raise ValueError("short IPv4 address block")
        fields["source"] = socket.inet_ntop(socket.AF_INET, body[0:4])
        fields["destination"] = socket.inet_ntop(socket.AF_INET, body[4:8])
        fields["source_port"] = int.from_bytes(body[8:10], "big")
        fields["destination_port"] = int.from_bytes(body[10:12], "big")
        offset = 12
    elif family >> 4 == 2:  # AF_INET6
        if length < 36:
            raise ValueError("short IPv6 address block")
        fields["source"] = socket.inet_ntop(socket.AF_INET6, body[0:16])
        fields["destination"] = socket.inet_ntop(socket.AF_INET6, body[16:32])
        fields["source_port"] = int.from_bytes(body[32:34], "big")
        fields["destination_port"] = int.from_bytes(body[34:36], "big")
        offset = 36
    elif family >> 4 == 3:  # AF_UNIX
        if length < 216:
            raise ValueError("short Unix address block")
        offset = 216
    else:
        offset = 0
    tlvs = {}
    while offset < length:
        if length - offset < 3:
            raise ValueError("truncated TLV header")
        kind, size = body[offset], int.from_bytes(body[offset + 1:offset + 3], "big")
        if offset + 3 + size > length:
            raise ValueError(f"TLV 0x{kind:02x} runs past the header")
        tlvs[kind] = body[offset + 3:offset + 3 + size]
        offset += 3 + size
    if 0xE0 in tlvs:
        if len(tlvs[0xE0]) != 2:
            raise ValueError("TLV 0xE0 is not 2 bytes")
        fields["domain_id"] = int.from_bytes(tlvs[0xE0], "big")
    if 0xE1 in tlvs:
        fields["domain_name"] = tlvs[0xE1].decode("utf-8", "replace")
    fields["tlvs"] = sorted(tlvs)
    return fields, 16 + length


async def proxy_echo_server(args):
    """Expects a PROXY v2 header on every connection; answers with one JSON line of
    what the header says, then echoes every byte after the header and half-closes
    after the client's EOF. A missing or malformed header is answered with an
    {"error": ...} line and the connection closed."""

    async def handle(reader, writer):
        data = bytearray()
        try:
            while True:
                try:
                    fields, length = parse_proxy_v2(data)
                except ValueError as error:
                    writer.write((json.dumps({"error": str(error)}) + "\n").encode())
                    await writer.drain()
                    say("closed bad header:", error)
                    return
                if fields is not None:
                    break
                chunk = await reader.read(1 << 16)
                if not chunk:
                    writer.write((json.dumps({"error": f"eof after {len(data)} bytes, no complete header"}) + "\n").encode())
                    await writer.drain()
                    say("closed before a header")
                    return
                data += chunk
            say("header", json.dumps(fields))
            writer.write((json.dumps(fields) + "\n").encode())
            rest = bytes(data[length:])
            received = len(rest)
            if rest:
                writer.write(rest)
            await writer.drain()
            while chunk := await reader.read(1 << 16):
                received += len(chunk)
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
            say(f"closed eof after {received} bytes")
        except (ConnectionError, OSError) as error:
            say(f"closed error {type(error).__name__}")
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", args.port, backlog=128)
    say("listening", args.port)
    async with server:
        await server.serve_forever()


# ---- clients ---------------------------------------------------------------

def connect(port, timeout):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def probe(args):
    """Retries until one echo round trip through the port succeeds."""
    deadline = time.monotonic() + args.timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        try:
            with connect(args.port, 2) as sock:
                sock.sendall(b"probe\n")
                reply = b""
                while len(reply) < 6:
                    chunk = sock.recv(64)
                    if not chunk:
                        break
                    reply += chunk
                if reply == b"probe\n":
                    say("ok")
                    return 0
                last = f"reply {reply!r}"
        except OSError as error:
            last = str(error)
        time.sleep(0.2)
    say("probe failed:", last)
    return 1


def sink(args):
    """Reads --bytes of the source pattern as fast as possible (or for --seconds, then
    closes); every byte checked. Prints MB/s."""
    with connect(args.port, args.timeout) as sock:
        sock.settimeout(args.timeout)
        received = 0
        buffer = bytearray(1 << 18)
        view = memoryview(buffer)
        start = time.monotonic()
        stop = start + args.seconds if args.seconds else None
        while received < args.bytes and (stop is None or time.monotonic() < stop):
            count = sock.recv_into(view, min(len(buffer), args.bytes - received))
            if count == 0:
                say(f"early eof after {received} bytes")
                return 1
            if not pattern_matches(received, view[:count]):
                say(f"pattern mismatch at {received}")
                return 1
            received += count
        seconds = time.monotonic() - start
    say(json.dumps({"bytes": received, "seconds": seconds, "mbps": received / seconds / 1e6}))
    return 0


class Stop(Exception):
    pass


def raise_stop(signum, frame):
    raise Stop()


def slow_reader(args):
    """Reads the source pattern at --rate bytes/s, checking every byte, for --seconds
    or until SIGTERM, and then reports. (The signal is unblocked explicitly: a parent's
    blocked mask is inherited across exec.)"""
    signal.signal(signal.SIGTERM, raise_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    with connect(args.port, 10) as sock:
        sock.settimeout(10)
        received = 0
        start = time.monotonic()
        piece = max(1, args.rate // 10)
        try:
            while time.monotonic() - start < args.seconds:
                chunk = sock.recv(piece)
                if not chunk:
                    say(f"early eof after {received} bytes")
                    return 1
                if not pattern_matches(received, chunk):
                    say(f"pattern mismatch at {received}")
                    return 1
                received += len(chunk)
                time.sleep(len(chunk) / args.rate)
        except Stop:
            pass
    say(f"ok slow reader read {received} bytes in {time.monotonic() - start:.1f}s")
    return 0


def half_close(args):
    """Sends --bytes, shuts its write side, then must read the whole reply (with
    --read-delay, only after that many seconds and then slowly: the reply keeps
    waiting in the gateway's socket)."""
    payload = os.urandom(args.bytes)
    with connect(args.port, args.timeout) as sock:
        sock.settimeout(args.timeout)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        time.sleep(args.read_delay)
        start = time.monotonic()
        reply = bytearray()
        while chunk := sock.recv(1 << 16):
            reply += chunk
            if args.read_delay:
                # A slow reader: the reply keeps waiting in the gateway's socket.
                time.sleep(0.005)
    if bytes(reply) != payload:
        say(f"reply differs: {len(reply)} bytes of {len(payload)}")
        return 1
    say(f"ok {len(reply)} bytes after half-close, reply took {time.monotonic() - start:.2f}s")
    return 0


def refused(args):
    """Connects, sends a line and reports how and how fast the connection ended."""
    start = time.monotonic()
    result = {"connected": False, "bytes": 0, "end": "timeout"}
    try:
        with connect(args.port, args.timeout) as sock:
            result["connected"] = True
            sock.settimeout(args.timeout)
            try:
                sock.sendall(b"hello\n")
                while chunk := sock.recv(4096):
                    result["bytes"] += len(chunk)
                result["end"] = "eof"
            except socket.timeout:
                result["end"] = "timeout"
            except OSError as error:
                result["end"] = f"error {type(error).__name__}"
    except ConnectionRefusedError:
        result["end"] = "refused"
    except OSError as error:
        result["end"] = f"error {type(error).__name__}"
    result["seconds"] = time.monotonic() - start
    say(json.dumps(result))
    return 0


def stream(args):
    """Streams to an echo server and reads the echo until the connection ends.
    Prints 'streaming' once 1 MiB came back, then how the connection ended."""
    block = os.urandom(1 << 16)
    echoed = 0
    announced = False
    deadline = time.monotonic() + args.timeout
    with connect(args.port, 10) as sock:
        sock.setblocking(False)
        import selectors
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        try:
            while time.monotonic() < deadline:
                for _, events in selector.select(timeout=0.5):
                    if events & selectors.EVENT_READ:
                        chunk = sock.recv(1 << 16)
                        if not chunk:
                            say(f"ended eof after {echoed} bytes")
                            return 0
                        echoed += len(chunk)
                        if not announced and echoed >= 1 << 20:
                            say("streaming")
                            announced = True
                    if events & selectors.EVENT_WRITE:
                        sock.send(block)
        except BlockingIOError:
            pass
        except OSError as error:
            say(f"ended {type(error).__name__} after {echoed} bytes")
            return 0
    say(f"timeout after {echoed} bytes")
    return 3


async def many(args):
    """Opens --count connections, all open at once, then sends a distinct payload on
    each and checks each echo, then closes them all."""
    raise_fd_limit()
    deadline = time.monotonic() + args.timeout
    gate = asyncio.Semaphore(100)

    async def open_one(index):
        async with gate:
            for attempt in range(20):
                try:
                    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", args.port), 10)
                except OSError:
                    await asyncio.sleep(0.1 * (attempt + 1))
            raise ConnectionError(f"connection {index} could not be opened")

    start = time.monotonic()
    connections = await asyncio.wait_for(asyncio.gather(*(open_one(i) for i in range(args.count))), args.timeout)
    opened = time.monotonic() - start

    async def exchange(index, reader, writer):
        payload = (f"{index:06d}:" * (args.bytes // 7 + 1)).encode()[: args.bytes]
        writer.write(payload)
        await writer.drain()
        reply = await reader.readexactly(len(payload))
        return reply == payload

    results = await asyncio.wait_for(
        asyncio.gather(*(exchange(i, r, w) for i, (r, w) in enumerate(connections)), return_exceptions=True),
        max(1, deadline - time.monotonic()),
    )
    good = sum(1 for result in results if result is True)
    for _, writer in connections:
        writer.close()
    if good != args.count:
        failures = [repr(result) for result in results if result is not True][:3]
        say(f"only {good} of {args.count} echoed correctly: {failures}")
        return 1
    say(f"ok {good} concurrent connections, opened in {opened:.2f}s, all echoed in {time.monotonic() - start:.2f}s")
    return 0


def proxy_check(args):
    """Sends --bytes of random data to a proxy-echo-server behind the port, shuts its
    write side, and prints the server's JSON line plus whether the bytes after it are
    exactly the ones sent (exit status 0 only if they are)."""
    payload = os.urandom(args.bytes)
    with connect(args.port, args.timeout) as sock:
        sock.settimeout(args.timeout)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reply = bytearray()
        while chunk := sock.recv(1 << 16):
            reply += chunk
    line, _, rest = bytes(reply).partition(b"\n")
    try:
        result = json.loads(line)
    except ValueError:
        result = {"error": f"no JSON line: {line[:80]!r}"}
    result["payload_ok"] = rest == payload
    result["echoed"] = len(rest)
    say(json.dumps(result))
    return 0 if result["payload_ok"] else 1


async def hold(args):
    """Opens --count connections to an echo service and checks one exchange on each;
    prints 'holding N' and keeps them open, idle, until the file --go exists; then
    checks another exchange on each and prints 'ok N' (status 0) or what failed."""
    raise_fd_limit()
    gate = asyncio.Semaphore(100)

    async def open_one(index):
        async with gate:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", args.port), args.wait)
            await exchange(index, reader, writer, "first")
            return reader, writer

    async def exchange(index, reader, writer, round_name):
        payload = f"{round_name} {index:06d}\n".encode()
        writer.write(payload)
        await writer.drain()
        reply = await asyncio.wait_for(reader.readexactly(len(payload)), args.wait)
        if reply != payload:
            raise ValueError(f"connection {index}: {reply!r} instead of {payload!r}")

    start = time.monotonic()
    try:
        connections = await asyncio.wait_for(asyncio.gather(*(open_one(i) for i in range(args.count))), args.timeout)
    except Exception as error:  # noqa: BLE001 - reported, the status says it failed
        say(f"opening failed: {type(error).__name__} {error}")
        return 1
    say(f"holding {len(connections)} connections, opened in {time.monotonic() - start:.2f}s")
    deadline = time.monotonic() + args.timeout
    while not os.path.exists(args.go):
        if time.monotonic() > deadline:
            say("no go file")
            return 2
        await asyncio.sleep(0.05)
    results = await asyncio.gather(
        *(exchange(i, r, w, "second") for i, (r, w) in enumerate(connections)), return_exceptions=True
    )
    good = sum(1 for result in results if result is None)
    for _, writer in connections:
        writer.close()
    if good != args.count:
        failures = [repr(result) for result in results if result is not None][:3]
        say(f"only {good} of {args.count} still echoed: {failures}")
        return 1
    say(f"ok {good}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("echo-server")
    command.add_argument("--port", type=int, required=True)
    command.add_argument("--reply-after-eof", type=float)
    command = commands.add_parser("proxy-echo-server")
    command.add_argument("--port", type=int, required=True)
    command = commands.add_parser("source-server")
    command.add_argument("--port", type=int, required=True)
    command = commands.add_parser("probe")
    command.add_argument("--port", type=int, required=True)
    command.add_argument("--timeout", type=float, default=20)
    command = commands.add_parser("sink")
    command.add_argument("--port", type=int, required=True)
    command.add_argument("--bytes", type=int, required=True)
    command.add_argument("--seconds", type=float, help="stop after this long (the rate of what came)")
    command.add_argument("--timeout", type=float, default=60)
    command = commands.add_parser("slow-reader")
    command.add_argument("--port", type=int, required=True)
    command.add_argument("--rate", type=int, required=True)
    command.add_argument("--seconds", type=float, required=True)
    command = commands.add_parser("half-close")
    command.add_argument("--port", type=int, required=True)
    command.add_argument("--bytes", type=int, required=True)
    command.add_argument("--timeout", type=float, default=30)
    command.add_argument("--read-delay", type=float, default=0)
    command = commands.add_parser("refused")
    command.add_argument("--port", type=int, required=True)
    command.add_argument("--timeout", type=float, default=10)
    command = commands.add_parser("stream")
    command.add_argument("--port", type=int, required=True)
    command.add_argument("--timeout", type=float, default=60)
    command = commands.add_parser("many")
    command.add_argument("--port", type=int, required=True)
    command.add_argument("--count", type=int, required=True)
    command.add_argument("--bytes", type=int, default=1000)
    command.add_argument("--timeout", type=float, default=120)
    command = commands.add_parser("proxy-check")
    command.add_argument("--port", type=int, required=True)
    command.add_argument("--bytes", type=int, required=True)
    command.add_argument("--timeout", type=float, default=30)
    command = commands.add_parser("hold")
    command.add_argument("--port", type=int, required=True)
    command.add_argument("--count", type=int, required=True)
    command.add_argument("--go", required=True)
    command.add_argument("--timeout", type=float, default=120)
    command.add_argument("--wait", type=float, default=10, help="seconds one connect or exchange may take")
    args = parser.parse_args()

    if args.command == "echo-server":
        asyncio.run(echo_server(args))
    elif args.command == "source-server":
        asyncio.run(source_server(args))
    elif args.command == "proxy-echo-server":
        asyncio.run(proxy_echo_server(args))
    elif args.command == "many":
        return asyncio.run(many(args))
    elif args.command == "hold":
        return asyncio.run(hold(args))
    else:
        return {"probe": probe, "sink": sink, "slow-reader": slow_reader, "half-close": half_close,
                "refused": refused, "stream": stream, "proxy-check": proxy_check}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
