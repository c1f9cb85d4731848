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
    if 0x20 in tlvs:
        fields["ssl"] = parse_ssl_tlv(tlvs[0x20])
    if 0xE2 in tlvs:
        fields["asserted_domain"] = tlvs[0xE2].decode("utf-8", "replace")
    if 0xE3 in tlvs:
        fields["asserted_by"] = tlvs[0xE3].decode("utf-8", "replace")
    fields["tlvs"] = sorted(tlvs)
    return fields, 16 + length


def parse_ssl_tlv(value):
    """What a PP2_TYPE_SSL TLV (0x20) says: its client byte, its verify word and its
    sub-TLVs (0x21 version, 0x22 common name, 0x23 cipher, 0x24 signature and 0x25
    key algorithm). A malformed one is reported in an "error" field."""
    if len(value) < 5:
        return {"error": f"{len(value)} bytes, shorter than client and verify"}
    fields = {"client": value[0], "verify": int.from_bytes(value[1:5], "big")}
    names = {0x21: "version", 0x22: "cn", 0x23: "cipher", 0x24: "sig_alg", 0x25: "key_alg"}
    offset = 5
    kinds = []
    while offset < len(value):
        if len(value) - offset < 3:
            fields["error"] = "truncated sub-TLV header"
            break
        kind, size = value[offset], int.from_bytes(value[offset + 1:offset + 3], "big")
        if offset + 3 + size > len(value):
            fields["error"] = f"sub-TLV 0x{kind:02x} runs past the TLV"
            break
        kinds.append(kind)
        if kind in names:
            fields[names[kind]] = value[offset + 3:offset + 3 + size].decode("utf-8", "replace")
        offset += 3 + size
    fields["sub_tlvs"] = kinds
    return fields


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


async def tls_echo_server(args):
    """A TLS server (--cert, --key) that echoes every connection until the client's
    EOF, then closes. With --client-ca it requires a client certificate signed by that
    CA. Says `client CN` (or `client -`) for each connection whose handshake
    completed, and `handshake failed: ...` for each that did not."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    if args.client_ca:
        context.load_verify_locations(args.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED

    async def handle(reader, writer):
        certificate = writer.get_extra_info("peercert") or {}
        names = [value for entry in certificate.get("subject", ()) for key, value in entry if key == "commonName"]
        say("client", names[0] if names else "-")
        received = 0
        try:
            while chunk := await reader.read(1 << 16):
                received += len(chunk)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError) as error:
            say(f"closed error {type(error).__name__} after {received} bytes")
            return
        finally:
            writer.close()
        say(f"closed eof after {received} bytes")

    def report(loop, context):
        error = context.get("exception")
        say("handshake failed:" if isinstance(error, ssl.SSLError) else "error:", context.get("message"), error)

    asyncio.get_running_loop().set_exception_handler(report)
    server = await asyncio.start_server(handle, "127.0.0.1", args.port, ssl=context, backlog=128)
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


def tls_context(args):
    """A client context trusting --cafile, with --cert/--key as its certificate."""
    import ssl

    context = ssl.create_default_context(cafile=args.cafile)
    if args.cert:
        context.load_cert_chain(args.cert, args.key)
    return context


def fingerprint(certificate):
    """SHA-256 of a DER certificate as `openssl x509 -fingerprint -sha256` writes it."""
    import hashlib

    return ":".join(f"{byte:02X}" for byte in hashlib.sha256(certificate).digest())


def proxy_v2_header(domain_id, domain_name, source, port):
    """A PROXY v2 header (TCP over IPv4, from `source` to 127.0.0.1:`port`) with the
    gateway's TLVs: 0xE0 the domain id (2 bytes), 0xE1 its name."""
    body = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + (40000).to_bytes(2, "big")
    body += port.to_bytes(2, "big")
    if domain_id is not None:
        body += bytes([0xE0]) + (2).to_bytes(2, "big") + domain_id.to_bytes(2, "big")
    if domain_name is not None:
        name = domain_name.encode()
        body += bytes([0xE1]) + len(name).to_bytes(2, "big") + name
    return PROXY_V2_SIGNATURE + bytes([0x21, 0x11]) + len(body).to_bytes(2, "big") + body


async def open_stream(args):
    """Connects to --host:--port, with TLS unless --plain; returns (reader, writer,
    facts about the TLS session)."""
    if args.plain:
        reader, writer = await asyncio.open_connection(args.host, args.port)
        return reader, writer, {}
    reader, writer = await asyncio.open_connection(
        args.host, args.port, ssl=tls_context(args), server_hostname=args.server_name, ssl_handshake_timeout=args.timeout
    )
    session = writer.get_extra_info("ssl_object")
    return reader, writer, {"version": session.version(), "fingerprint": fingerprint(session.getpeercert(True))}


async def close_stream(writer):
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 2)
    except (Exception, asyncio.TimeoutError):  # noqa: BLE001 - closing is best effort
        pass


async def tls_check(args):
    """One connection (TLS unless --plain): optionally a PROXY v2 header first
    (--proxy-domain-id/--proxy-domain-name), then --bytes of random data that must
    come back exactly (after the JSON line of a proxy-echo-server with
    --expect-header). Prints one JSON line: whether the handshake completed, the TLS
    version and the server certificate's fingerprint, the bytes sent and echoed, the
    header, the error if any; status 0 only if every byte came back. With --plain
    and --half-close it shuts its write side once all is sent."""
    payload = os.urandom(args.bytes)
    result = {"handshake": False, "sent": 0, "echoed": 0, "ok": False}
    writer = None
    try:
        reader, writer, session = await asyncio.wait_for(open_stream(args), args.timeout)
        result.update(session)
        result["handshake"] = True
        if args.proxy_domain_id is not None or args.proxy_domain_name is not None:
            writer.write(proxy_v2_header(args.proxy_domain_id, args.proxy_domain_name, args.proxy_source, args.port))

        async def send():
            for offset in range(0, len(payload), 1 << 16):
                writer.write(payload[offset:offset + (1 << 16)])
                await writer.drain()
            result["sent"] = len(payload)
            if args.half_close:
                writer.write_eof()

        async def receive():
            if args.expect_header:
                line = await reader.readline()
                try:
                    result["header"] = json.loads(line)
                except ValueError:
                    raise ValueError(f"no JSON line: {line[:80]!r}")
            echoed = bytearray()
            try:
                while len(echoed) < len(payload):
                    chunk = await reader.read(min(1 << 16, len(payload) - len(echoed)))
                    if not chunk:
                        raise EOFError(f"eof after {len(echoed)} bytes")
                    echoed += chunk
            finally:
                result["echoed"] = len(echoed)
            if bytes(echoed) != payload:
                raise ValueError("the echo differs from what was sent")

        await asyncio.wait_for(asyncio.gather(send(), receive()), args.timeout)
        result["ok"] = "error" not in result.get("header", {})
    except (Exception, asyncio.TimeoutError) as error:  # noqa: BLE001 - reported, the status says it failed
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        if writer is not None:
            await close_stream(writer)
    say(json.dumps(result))
    return 0 if result["ok"] else 1


async def tls_stream(args):
    """Streams the test pattern over TLS to an echo service at --rate bytes/s until the
    file --go exists, checking every echoed byte; says `streaming` once 1 MiB came
    back and `progress N` (bytes echoed) twice a second. Then stops sending, reads the
    rest of the echo and prints one JSON line (bytes sent and echoed, the server
    certificate's fingerprint); status 0 only if all came back exactly."""
    result = {"sent": 0, "echoed": 0, "ok": False}
    writer = None
    deadline = time.monotonic() + args.timeout
    try:
        reader, writer, session = await asyncio.wait_for(open_stream(args), 30)
        result.update(session)
        done_sending = asyncio.Event()

        async def send():
            start = time.monotonic()
            while not os.path.exists(args.go):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no {args.go} within {args.timeout} s")
                writer.write(PATTERN)
                result["sent"] += len(PATTERN)
                await writer.drain()
                ahead = result["sent"] / args.rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            done_sending.set()

        async def receive():
            announced = False
            reported = time.monotonic()
            while not (done_sending.is_set() and result["echoed"] == result["sent"]):
                try:
                    chunk = await asyncio.wait_for(reader.read(1 << 16), 0.5)
                except asyncio.TimeoutError:
                    chunk = None
                if chunk == b"":
                    raise EOFError(f"eof after {result['echoed']} bytes")
                if chunk:
                    if not pattern_matches(result["echoed"], chunk):
                        raise ValueError(f"pattern mismatch at {result['echoed']}")
                    result["echoed"] += len(chunk)
                if not announced and result["echoed"] >= 1 << 20:
                    say("streaming")
                    announced = True
                if time.monotonic() - reported >= 0.5:
                    say("progress", result["echoed"])
                    reported = time.monotonic()
                if time.monotonic() > deadline + 30:
                    raise TimeoutError("the echo did not catch up")

        await asyncio.gather(send(), receive())
        result["ok"] = True
    except (Exception, asyncio.TimeoutError) as error:  # noqa: BLE001 - reported, the status says it failed
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        if writer is not None:
            await close_stream(writer)
    say(json.dumps(result))
    return 0 if result["ok"] else 1


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
    command = commands.add_parser("tls-echo-server")
    command.add_argument("--port", type=int, required=True)
    command.add_argument("--cert", required=True)
    command.add_argument("--key", required=True)
    command.add_argument("--client-ca", help="require a client certificate signed by this CA")
    for name in ("tls-check", "tls-stream"):
        command = commands.add_parser(name)
        command.add_argument("--port", type=int, required=True)
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--cafile", help="CAs trusted for the server's certificate")
        command.add_argument("--cert", help="client certificate")
        command.add_argument("--key", help="its key")
        command.add_argument("--server-name", default="localhost", help="SNI and the name the server must have")
        command.add_argument("--plain", action="store_true", help="plain TCP, no TLS")
        if name == "tls-check":
            command.add_argument("--bytes", type=int, default=4096)
            command.add_argument("--proxy-domain-id", type=int, help="send a PROXY v2 header with TLV 0xE0 first")
            command.add_argument("--proxy-domain-name", help="... with TLV 0xE1")
            command.add_argument("--proxy-source", default="100.64.0.2", help="the header's source address")
            command.add_argument("--expect-header", action="store_true", help="a proxy-echo-server's JSON line first")
            command.add_argument("--half-close", action="store_true", help="with --plain: shut the write side after")
            command.add_argument("--timeout", type=float, default=20)
        else:
            command.add_argument("--go", required=True)
            command.add_argument("--rate", type=int, default=4 << 20, help="bytes per second")
            command.add_argument("--timeout", type=float, default=120)
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
    elif args.command == "tls-echo-server":
        asyncio.run(tls_echo_server(args))
    elif args.command == "tls-check":
        return asyncio.run(tls_check(args))
    elif args.command == "tls-stream":
        return asyncio.run(tls_stream(args))
    else:
        return {"probe": probe, "sink": sink, "slow-reader": slow_reader, "half-close": half_close,
                "refused": refused, "stream": stream, "proxy-check": proxy_check}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
