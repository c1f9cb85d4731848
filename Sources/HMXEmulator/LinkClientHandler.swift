// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

/// What a domain process receives: first the emulator's welcome, then frames.
enum LinkClientInbound {
    case welcome(LinkWire.Welcome)
    case frame(LinkWire.Frame)
}

/// Decodes the welcome (16 bytes, once) and then fixed-size link frames.
struct LinkClientDecoder: ByteToMessageDecoder {
    typealias InboundOut = LinkClientInbound
    private var hasWelcome = false

    struct MalformedWelcome: Error {}

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if !self.hasWelcome {
            guard buffer.readableBytes >= LinkWire.Welcome.size else { return .needMoreData }
            let welcome = buffer.withUnsafeReadableBytes { bytes in
                LinkWire.Welcome(parsing: UnsafeRawBufferPointer(rebasing: bytes[0..<LinkWire.Welcome.size]))
            }
            guard let welcome else { throw MalformedWelcome() }
            buffer.moveReaderIndex(forwardBy: LinkWire.Welcome.size)
            self.hasWelcome = true
            context.fireChannelRead(Self.wrapInboundOut(.welcome(welcome)))
            return .continue
        }
        let result = try buffer.withUnsafeReadableBytes { bytes in try LinkWire.parse(bytes) }
        switch result {
        case .needMore:
            return .needMoreData
        case .frame(let frame, let consumed):
            buffer.moveReaderIndex(forwardBy: consumed)
            context.fireChannelRead(Self.wrapInboundOut(.frame(frame)))
            return .continue
        }
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try self.decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

/// Hands the welcome to the attach call, then frames to the ``LinkState``.
final class LinkClientHandler: ChannelInboundHandler {
    typealias InboundIn = LinkClientInbound

    private var welcome: EventLoopPromise<LinkWire.Welcome>?
    var state: LinkState?

    init(welcome: EventLoopPromise<LinkWire.Welcome>) {
        self.welcome = welcome
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .welcome(let welcome):
            self.welcome?.succeed(welcome)
            self.welcome = nil
        case .frame(let frame):
            self.state?.received(frame)
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
