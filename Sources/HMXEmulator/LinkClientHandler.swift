// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

/// What a domain process receives: first the emulator's welcome (16 bytes, once), then
/// fixed-size link frames. Hands the welcome to the attach call, then each frame to
/// the ``LinkState`` as it is parsed.
final class LinkClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private var welcome: EventLoopPromise<LinkWire.Welcome>?
    private var hasWelcome = false
    /// Bytes of the welcome received so far (it is 16 bytes; usually one read).
    private var welcomeBytes = ByteBuffer()
    private var splitter = LinkFrameSplitter()
    var state: LinkState?

    struct MalformedWelcome: Error {}

    init(welcome: EventLoopPromise<LinkWire.Welcome>) {
        self.welcome = welcome
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var input = Self.unwrapInboundIn(data)
        do {
            if !self.hasWelcome {
                var piece = input.readSlice(
                    length: min(input.readableBytes, LinkWire.Welcome.size - self.welcomeBytes.readableBytes)
                )!
                self.welcomeBytes.writeBuffer(&piece)
                guard self.welcomeBytes.readableBytes == LinkWire.Welcome.size else { return }
                let welcome = self.welcomeBytes.withUnsafeReadableBytes { bytes in LinkWire.Welcome(parsing: bytes) }
                guard let welcome else { throw MalformedWelcome() }
                self.hasWelcome = true
                self.welcomeBytes = ByteBuffer()
                self.welcome?.succeed(welcome)
                self.welcome = nil
            }
            try self.splitter.split(input) { frame in self.state?.received(frame) }
        } catch {
            self.errorCaught(context: context, error: error)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.welcome?.fail(HMXError(code: .linkClosed, message: "the emulator closed the connection during attach"))
        self.welcome = nil
        self.state?.closed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.welcome?.fail(HMXError(code: .protocolViolation, message: "emulator link: \(error)"))
        self.welcome = nil
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension LinkClientHandler: Sendable {}
