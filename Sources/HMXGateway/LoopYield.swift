// SPDX-License-Identifier: Apache-2.0
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Runs work on an event loop after the I/O that is ready now, as if it were one more
/// socket of the loop.
///
/// SwiftNIO runs the tasks that tasks queue within the same loop tick, before it polls
/// its sockets again. Work that continues itself with `execute` (the stream driver's
/// next turn while a peer keeps its inbox full) would keep the loop from every socket
/// for as long as the peer keeps sending. Here a continuation is a byte written to a
/// pipe whose other end the loop polls with its sockets: it runs in the loop's I/O
/// phase, in turn with them.
final class LoopYield {
    private let channel: any Channel
    private let writeDescriptor: CInt
    private var waiting: [() -> Void] = []
    private var isSignalled = false

    /// A pipe registered with an event loop, its write end not yet owned.
    struct Pipe: Sendable {
        var channel: any Channel
        var writeDescriptor: CInt
    }

    /// Registers a new pipe with `eventLoop` (a SwiftNIO `SelectableEventLoop`).
    static func makePipe(on eventLoop: any EventLoop) -> EventLoopFuture<Pipe> {
        var descriptors: [CInt] = [0, 0]
        guard pipe(&descriptors) == 0 else {
            return eventLoop.makeFailedFuture(IOError(errnoCode: errno, reason: "pipe"))
        }
        let (readEnd, writeEnd) = (descriptors[0], descriptors[1])
        for descriptor in descriptors {
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
        }
        return NIOPipeBootstrap(group: eventLoop)
            .takingOwnershipOfDescriptor(input: readEnd)
            .map { Pipe(channel: $0, writeDescriptor: writeEnd) }
            .flatMapErrorThrowing { error in
                Glibc.close(writeEnd)
                throw error
            }
    }

    /// Takes over `pipe`; call on its event loop.
    init(_ pipe: Pipe) throws {
        self.channel = pipe.channel
        self.writeDescriptor = pipe.writeDescriptor
        try pipe.channel.pipeline.syncOperations.addHandler(Reader(yield: self))
    }

    /// Runs `body` on the loop once the I/O that is ready now has been served.
    func schedule(_ body: @escaping () -> Void) {
        self.channel.eventLoop.preconditionInEventLoop()
        self.waiting.append(body)
        guard !self.isSignalled else { return }
        self.isSignalled = true
        var byte: UInt8 = 1
        // One byte in an empty pipe: never EAGAIN. Were it to fail, run on the loop.
        if write(self.writeDescriptor, &byte, 1) != 1 {
            self.isSignalled = false
            self.channel.eventLoop.assumeIsolated().execute { self.runWaiting() }
        }
    }

    private func runWaiting() {
        self.isSignalled = false
        var bodies: [() -> Void] = []
        swap(&bodies, &self.waiting)
        for body in bodies { body() }
    }

    func close() {
        self.channel.close(promise: nil)
        Glibc.close(self.writeDescriptor)
    }

    private final class Reader: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        weak var yield: LoopYield?

        init(yield: LoopYield) { self.yield = yield }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

        func channelReadComplete(context: ChannelHandlerContext) {
            self.yield?.runWaiting()
        }
    }
}
