// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXStream
import HMXTestSupport
import Logging
import NIOCore
import NIOEmbedded
import Testing

@testable import HMXGateway

/// The socket glue on `EmbeddedChannel`s: alpha is the real ``Gateway`` on an
/// in-process link (its import's client is an `EmbeddedChannel`), beta a bare
/// ``StreamDriver`` whose export target the test plays.
@Suite("Stream glue handler", .serialized)
struct StreamGlueHandlerTests {
    /// Sits between the glue and the channel's head: counts reads that reach the
    /// socket and records closes (a half-close is kept from the embedded channel,
    /// which only knows full closes).
    final class SocketRecorder: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var reads = 0
        var closes: [CloseMode] = []

        func read(context: ChannelHandlerContext) {
            self.reads += 1
            context.read()
        }

        func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
            self.closes.append(mode)
            if mode == .output {
                promise?.succeed(())
            } else {
                context.close(mode: mode, promise: promise)
            }
        }
    }

    /// Beta: admits every OPEN at once and keeps what its target would receive.
    final class Target: StreamDriverDelegate, StreamSocket {
        var driver: StreamDriver!
        var received = ByteBuffer()
        var connection: ConnectionID?
        var ended: [ConnectionEnd] = []
        var outputShut = false
        /// The target's socket takes what is written (false: a reader that stalls).
        var takesBytes = true

        func admit(_ id: ConnectionID, servicePort: UInt32) -> StreamDriver.Admission {
            self.connection = id
            self.driver.attach(self, to: id)
            return .dial()
        }

        // The target's socket.
        func write(_ bytes: ByteBuffer) {
            var bytes = bytes
            let count = bytes.readableBytes
            self.received.writeBuffer(&bytes)
            if self.takesBytes, let id = self.connection { self.driver.localWriteCompleted(id, count: count) }
        }

        func flush() {}
        func read() {}
        func abort() {}

        func shutdownOutput() {
            self.outputShut = true
        }

        func perform(_ action: StreamAction) {
            switch action {
            case .ended(_, let end):
                self.ended.append(end)
            default:
                break
            }
        }

        func turnEnded(_ statistics: StreamStatistics) {}
    }

    struct Setup {
        let loop: EmbeddedEventLoop
        let hypervisor: InProcessHypervisor
        let gateway: Gateway
        let target: Target
        let channel: EmbeddedChannel
        let recorder: SocketRecorder

        /// Lets the loop run its queued work (pumps, turns).
        func settle() {
            for _ in 0..<8 { self.loop.run() }
        }
    }

    static let config = """
        link:
          emulator: /unused.sock
          ring_size: 65536
        peers:
          beta: 2
        imports:
          - name: echo
            listen: tcp://127.0.0.1:1
            peer: beta
            port: 7
        limits:
          window: 4096
          window_max: 4096
        """

    static func setUp() throws -> Setup {
        let loop = EmbeddedEventLoop()
        let hypervisor = InProcessHypervisor(eventLoop: loop)
        let alphaLink = try hypervisor.attach(DomainID(1), name: "alpha")
        let betaLink = try hypervisor.attach(DomainID(2), name: "beta")
        let config = try GatewayConfig.parse(Self.config, file: "alpha.yaml")
        let gateway = Gateway(
            config: config,
            link: alphaLink,
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        )
        let target = Target()
        target.driver = StreamDriver(
            link: betaLink,
            configuration: Gateway.driverConfiguration(config)
        )
        target.driver.delegate = target
        _ = target.driver.start(partners: [DomainID(1)], wildcard: false)
        _ = gateway.driver.start(partners: [DomainID(2)], wildcard: false)
        let recorder = SocketRecorder()
        let importConfig = config.imports[0]
        let glue = StreamGlueHandler(driver: gateway.driver) { gateway.accepted($0, for: importConfig) }
        let channel = EmbeddedChannel(loop: loop)
        try channel.pipeline.syncOperations.addHandler(recorder)
        try channel.pipeline.syncOperations.addHandler(glue)
        let setup = Setup(
            loop: loop,
            hypervisor: hypervisor,
            gateway: gateway,
            target: target,
            channel: channel,
            recorder: recorder
        )
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        setup.settle()
        return setup
    }

    @Test("reads reach the socket only once the peer granted credit, one at a time, and stop when it is spent")
    func readsGatedOnCredit() throws {
        let setup = try Self.setUp()
        let id = try #require(setup.target.connection)
        setup.target.takesBytes = false
        #expect(setup.recorder.reads == 0, "not before ACCEPT")
        setup.target.driver.dialSucceeded(id)
        setup.settle()
        #expect(setup.recorder.reads == 1)
        // A read from elsewhere in the pipeline does not pass the glue while one is out.
        try setup.channel.writeInbound(ByteBuffer(repeating: 1, count: 1000))
        setup.settle()
        #expect(setup.recorder.reads == 2, "credit left: one more read")
        setup.channel.read()
        #expect(setup.recorder.reads == 3, "the glue allows a read while one is asked for")
        // The window (4096) is spent: the socket is not read again until credit comes.
        try setup.channel.writeInbound(ByteBuffer(repeating: 2, count: 3096))
        setup.settle()
        let reads = setup.recorder.reads
        setup.channel.read()
        #expect(setup.recorder.reads == reads, "no credit, no read")
        #expect(setup.target.received.readableBytes == 4096)
    }

    @Test("bytes from the peer are written and flushed at the end of the turn; their completion returns credit")
    func writesFlushAndCredit() throws {
        let setup = try Self.setUp()
        let id = try #require(setup.target.connection)
        setup.target.driver.dialSucceeded(id)
        setup.settle()
        setup.target.driver.localRead(id, ByteBuffer(repeating: 7, count: 4096))
        setup.settle()
        var written = ByteBuffer()
        while var chunk = try setup.channel.readOutbound(as: ByteBuffer.self) { written.writeBuffer(&chunk) }
        #expect(written == ByteBuffer(repeating: 7, count: 4096))
        // The embedded channel completed the writes when they were flushed: credit went
        // back, and beta may send again.
        #expect(setup.target.driver.connection(id)?.flow.sendCredit ?? 0 >= 1024)
    }

    @Test("half-close both ways: the client's EOF becomes FIN, the peer's FIN shuts the socket's output")
    func halfClose() throws {
        let setup = try Self.setUp()
        let id = try #require(setup.target.connection)
        setup.target.driver.dialSucceeded(id)
        setup.settle()
        setup.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        setup.settle()
        #expect(setup.target.outputShut, "beta's target sees EOF")
        setup.target.driver.localInputClosed(id)
        setup.settle()
        #expect(setup.recorder.closes == [.output])
        #expect(setup.gateway.activeConnectionCount == 0, "both FINs: the connection is gone")
    }

    @Test("a reset from the peer aborts the socket; a socket error resets the peer")
    func resets() throws {
        let setup = try Self.setUp()
        let id = try #require(setup.target.connection)
        setup.target.driver.dialSucceeded(id)
        setup.settle()
        setup.target.driver.terminate(id, .reset, resetReason: .applicationReset)
        setup.settle()
        #expect(setup.recorder.closes == [.all])
        #expect(!setup.channel.isActive)
        #expect(setup.gateway.activeConnectionCount == 0)

        let second = try Self.setUp()
        let other = try #require(second.target.connection)
        second.target.driver.dialSucceeded(other)
        second.settle()
        second.channel.pipeline.fireErrorCaught(ChannelError.ioOnClosedChannel)
        second.settle()
        #expect(second.target.ended == [.resetByPeer(.applicationReset)])
    }
}
