// SPDX-License-Identifier: Apache-2.0
import HMXProxyProtocol
import NIOCore
import NIOEmbedded
import NIOTLS
import Testing

@testable import HMXGateway

/// The handlers before an import's stream glue: the TLS gate and the PROXY header
/// reader, on `EmbeddedChannel`s with the TLS handler's events played by the test.
@Suite("TLS gate and PROXY header reader")
struct FrontHandlerTests {
    /// Stands in for the TLS module: the identity it reports, errors as handshake
    /// failures.
    final class FixedTLS: GatewayTLS {
        let identity: TLSPeerIdentity

        init(_ identity: TLSPeerIdentity) {
            self.identity = identity
        }

        func load(_ config: GatewayConfig) throws(TLSFilesError) {}
        func addServerHandler(for mapping: String, to channel: any Channel, gate: TLSGateHandler) throws {}
        func addClientHandler(for mapping: String, host: String, to channel: any Channel, gate: TLSGateHandler) throws {
        }
        func peerIdentity(of channel: any Channel) -> TLSPeerIdentity { self.identity }
        func classify(_ error: any Error) -> TLSHandshakeError { TLSHandshakeError(.handshakeFailed, "\(error)") }
    }

    /// Records what reaches the end of the pipeline: activation, reads, end of input.
    final class Behind: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var isActive = false
        var received: [UInt8] = []
        var readCompletes = 0
        var inputClosed = false
        var errors: [String] = []

        func channelActive(context: ChannelHandlerContext) {
            self.isActive = true
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            self.received += Self.unwrapInboundIn(data).readableBytesView
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            self.readCompletes += 1
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let event = event as? ChannelEvent, event == .inputClosed { self.inputClosed = true }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            self.errors.append("\(error)")
        }
    }

    /// Counts reads that reach the socket.
    final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var reads = 0

        func read(context: ChannelHandlerContext) {
            self.reads += 1
            context.read()
        }
    }

    static let netvm = TLSPeerIdentity(commonName: "netvm-a.example", dnsNames: ["netvm-a.example"], version: "TLSv1.3")

    @Test("nothing behind the gate sees the connection before the handshake; bytes wait for a read from behind")
    func gate() throws {
        let channel = EmbeddedChannel()
        let counter = ReadCounter()
        let gate = TLSGateHandler(tls: FixedTLS(Self.netvm), timeout: .seconds(10))
        let behind = Behind()
        try channel.pipeline.syncOperations.addHandlers([counter, gate, behind])
        try channel.connect(to: .init(ipAddress: "192.0.2.10", port: 1)).wait()
        #expect(!behind.isActive)
        #expect(counter.reads == 1, "the gate reads for the handshake itself")
        var identity: TLSPeerIdentity?
        gate.handshake.assumeIsolated().whenSuccess { identity = $0 }
        channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: nil))
        #expect(behind.isActive && identity == Self.netvm && gate.identity == Self.netvm)
        // Bytes no one behind asked for (the TLS handler read on its own) are held...
        try channel.writeInbound(ByteBuffer(string: "early"))
        channel.pipeline.fireChannelReadComplete()
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(behind.received.isEmpty && !behind.inputClosed)
        // ...until a read: then they come, and the end of input after them.
        let reads = counter.reads
        channel.read()
        #expect(String(decoding: behind.received, as: UTF8.self) == "early" && behind.inputClosed)
        #expect(counter.reads == reads, "held bytes answer the read without reading the socket")
        // With nothing held, a read goes to the socket and its bytes pass.
        channel.read()
        #expect(counter.reads == reads + 1)
        try channel.writeInbound(ByteBuffer(string: "!"))
        #expect(String(decoding: behind.received, as: UTF8.self) == "early!")
        _ = try? channel.finish()
    }

    @Test("a failed handshake fails the gate with the verification's reason, and closes the socket")
    func gateFailure() throws {
        let channel = EmbeddedChannel()
        let gate = TLSGateHandler(tls: FixedTLS(Self.netvm), timeout: .seconds(10))
        let behind = Behind()
        try channel.pipeline.syncOperations.addHandlers([gate, behind])
        try channel.connect(to: .init(ipAddress: "192.0.2.10", port: 1)).wait()
        var failure: TLSHandshakeError?
        gate.handshake.assumeIsolated().whenFailure { failure = $0 as? TLSHandshakeError }
        gate.verificationFailed(TLSHandshakeError(.expired, "the certificate of x has expired"))
        channel.pipeline.fireErrorCaught(ChannelError.ioOnClosedChannel)
        #expect(failure?.failure == .expired && failure?.detail == "the certificate of x has expired")
        #expect(!behind.isActive && !channel.isActive)
    }

    @Test("a client that never finishes its handshake is closed after the timeout")
    func gateTimeout() throws {
        let channel = EmbeddedChannel()
        let gate = TLSGateHandler(tls: FixedTLS(Self.netvm), timeout: .seconds(3))
        try channel.pipeline.syncOperations.addHandler(gate)
        try channel.connect(to: .init(ipAddress: "192.0.2.10", port: 1)).wait()
        var failure: TLSHandshakeError?
        gate.handshake.assumeIsolated().whenFailure { failure = $0 as? TLSHandshakeError }
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(failure == nil && channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(failure?.failure == .handshakeFailed && failure?.detail == "no TLS handshake within 3.0 s")
        #expect(!channel.isActive)
    }

    @Test("a server certificate without the configured name fails the handshake as a hostname mismatch")
    func gateHostname() throws {
        let channel = EmbeddedChannel()
        let gate = TLSGateHandler(tls: FixedTLS(Self.netvm), timeout: .seconds(10), expectedName: "db.host-b.example")
        try channel.pipeline.syncOperations.addHandler(gate)
        try channel.connect(to: .init(ipAddress: "192.0.2.10", port: 1)).wait()
        var failure: TLSHandshakeError?
        gate.handshake.assumeIsolated().whenFailure { failure = $0 as? TLSHandshakeError }
        channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: nil))
        #expect(failure?.failure == .hostnameMismatch)
        #expect(!channel.isActive)
    }

    /// A reader for `trusted`, in front of a recorder, on a connected channel from
    /// `address`; the refusals it reports.
    static func reader(
        trusted: [GatewayConfig.TrustedProxy],
        from address: String
    ) throws -> (EmbeddedChannel, ProxyHeaderReader, Behind, () -> [String]) {
        let channel = EmbeddedChannel()
        var refusals: [String] = []
        let reader = ProxyHeaderReader(trusted: trusted, timeout: .seconds(5)) { _, refused in
            refusals.append(refused.description)
        }
        let behind = Behind()
        try channel.pipeline.syncOperations.addHandlers([reader, behind])
        try channel.connect(to: .init(ipAddress: address, port: 40000)).wait()
        return (channel, reader, behind, { refusals })
    }

    static func header(domain: UInt16, name: String) throws -> ByteBuffer {
        var buffer = ByteBuffer()
        try ProxyHeader.hmx(domainID: domain, domainName: name).encode(into: &buffer)
        return buffer
    }

    @Test("a trusted source's header is read before the connection opens; the bytes after it wait for a read")
    func trustedHeader() throws {
        let trusted = [GatewayConfig.TrustedProxy.address(IPNetwork("192.0.2.0/24")!)]
        let (channel, reader, behind, refusals) = try Self.reader(trusted: trusted, from: "192.0.2.10")
        #expect(!behind.isActive && reader.trustedBy == "192.0.2.10")
        var bytes = try Self.header(domain: 2, name: "web")
        bytes.writeString("GET /")
        // Split inside the header: the reader keeps reading until it has all of it.
        try channel.writeInbound(bytes.getSlice(at: 0, length: 20)!)
        channel.pipeline.fireChannelReadComplete()
        #expect(!behind.isActive)
        try channel.writeInbound(bytes.getSlice(at: 20, length: bytes.readableBytes - 20)!)
        #expect(behind.isActive && reader.header?.hmxDomainName == "web" && reader.header?.hmxDomainID == 2)
        #expect(behind.received.isEmpty)
        // SwiftNIO reads without being asked when the client half-closes: those bytes
        // go behind the held ones.
        try channel.writeInbound(ByteBuffer(string: " HTTP/1.0"))
        #expect(behind.received.isEmpty)
        channel.read()
        #expect(String(decoding: behind.received, as: UTF8.self) == "GET / HTTP/1.0")
        #expect(refusals().isEmpty)
        _ = try? channel.finish()
    }

    @Test("a trusted source by certificate name, known from the TLS gate in front")
    func trustedByCertificate() throws {
        let channel = EmbeddedChannel()
        let gate = TLSGateHandler(tls: FixedTLS(Self.netvm), timeout: .seconds(10))
        let reader = ProxyHeaderReader(trusted: [.certificate("netvm-a.example")], timeout: .seconds(5)) { _, _ in }
        try channel.pipeline.syncOperations.addHandlers([gate, reader, Behind()])
        try channel.connect(to: .init(ipAddress: "203.0.113.1", port: 1)).wait()
        channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: nil))
        #expect(reader.trustedBy == "netvm-a.example")
        _ = try? channel.finish()
    }

    @Test("a trusted source without a valid header is refused before its connection opens")
    func trustedWithoutHeader() throws {
        let trusted = [GatewayConfig.TrustedProxy.address(IPNetwork("192.0.2.10")!)]
        let (channel, _, behind, refusals) = try Self.reader(trusted: trusted, from: "192.0.2.10")
        try channel.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n"))
        #expect(!behind.isActive && !channel.isActive)
        #expect(refusals().count == 1 && refusals()[0].contains("malformed PROXY header"), "\(refusals())")

        let (silent, _, _, silentRefusals) = try Self.reader(trusted: trusted, from: "192.0.2.10")
        silent.embeddedEventLoop.advanceTime(by: .seconds(6))
        #expect(!silent.isActive && silentRefusals() == ["no PROXY header within 5.0 s from 192.0.2.10"])
    }

    @Test("anyone else's bytes pass as they are, unless they begin with a PROXY header: then a reset")
    func untrusted() throws {
        let trusted = [GatewayConfig.TrustedProxy.address(IPNetwork("192.0.2.0/24")!)]
        let (channel, reader, behind, refusals) = try Self.reader(trusted: trusted, from: "198.51.100.1")
        #expect(behind.isActive && reader.trustedBy == nil, "opened at once: server-first protocols work")
        channel.read()
        // "\r\n" could still be a signature: held...
        try channel.writeInbound(ByteBuffer(string: "\r\n"))
        channel.pipeline.fireChannelReadComplete()
        #expect(behind.received.isEmpty)
        // ...until a byte that is not.
        try channel.writeInbound(ByteBuffer(string: "hello"))
        #expect(String(decoding: behind.received, as: UTF8.self) == "\r\nhello" && refusals().isEmpty)

        let (spoofing, _, spoofed, spoofRefusals) = try Self.reader(trusted: trusted, from: "198.51.100.1")
        spoofing.read()
        try spoofing.writeInbound(try Self.header(domain: 2, name: "web"))
        #expect(spoofed.received.isEmpty && spoofed.errors.count == 1)
        #expect(spoofRefusals().count == 1 && spoofRefusals()[0].contains("not in trusted_proxies"))
        _ = try? channel.finish()
    }

    @Test("a caller's identity survives its encoding; hostile blocks are refused without reading past them")
    func callerIdentity() throws {
        let caller = CallerIdentity(
            assertedBy: "netvm-a.example",
            domain: "web",
            certificateName: "netvm-a.example",
            tlsVersion: "TLSv1.3"
        )
        var buffer = ByteBuffer()
        caller.encode(into: &buffer)
        #expect(try CallerIdentity.decode(buffer) == caller)
        // Unknown types are skipped; the one who vouched is required.
        #expect(try CallerIdentity.decode(ByteBuffer(bytes: [0x99, 0, 1, 65, 0xE3, 0, 1, 66])).assertedBy == "B")
        #expect(throws: CallerIdentity.DecodeError.missingAssertedBy) {
            try CallerIdentity.decode(ByteBuffer(bytes: [0xE2, 0, 1, 65]))
        }
        #expect(throws: CallerIdentity.DecodeError.truncated) {
            try CallerIdentity.decode(ByteBuffer(bytes: [0xE3, 0, 9, 65]))
        }
        #expect(throws: CallerIdentity.DecodeError.notUTF8) {
            try CallerIdentity.decode(ByteBuffer(bytes: [0xE3, 0, 1, 0xFF]))
        }
        #expect(throws: CallerIdentity.DecodeError.valueTooLong) {
            try CallerIdentity.decode(ByteBuffer(bytes: [0xE3, 1, 0] + [UInt8](repeating: 65, count: 256)))
        }
        #expect(throws: CallerIdentity.DecodeError.tooLong) {
            try CallerIdentity.decode(ByteBuffer(bytes: [UInt8](repeating: 0, count: 1025)))
        }
    }
}
