// SPDX-License-Identifier: Apache-2.0
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// A daemon's local control socket: a Unix stream socket (mode 0600) where a client
/// writes one request line and reads the answer until the daemon closes, in the manner
/// of HAProxy's stats socket. Requests are `status` (text for a person) and
/// `status json`.
///
/// Bounded on both sides: a request is at most ``maximumRequest`` bytes and must arrive
/// within ``requestTimeout``; a client reads at most ``maximumResponse`` bytes.
public enum ControlSocket {
    public static let maximumRequest = 256
    public static let maximumResponse = 8 << 20
    public static let requestTimeout = TimeAmount.seconds(5)

    /// What a client asks for.
    public enum Request: Sendable, Equatable {
        case status(json: Bool)

        /// The request line (without its newline).
        public var line: String {
            switch self {
            case .status(let json): json ? "status json" : "status"
            }
        }

        /// Parses a request line; nil for anything else.
        public init?(line: String) {
            switch line.split(separator: " ", omittingEmptySubsequences: true) {
            case ["status"]: self = .status(json: false)
            case ["status", "json"]: self = .status(json: true)
            default: return nil
            }
        }
    }

    /// Answers a request on the daemon's event loop.
    public typealias Responder = @Sendable (Request) -> EventLoopFuture<String>

    /// Listens at `path` (a stale socket there is replaced; another kind of file is an
    /// error) with mode 0600, owned by `owner` when given (the user the daemon will run
    /// as, so that it and root may ask).
    ///
    /// The socket never exists at `path` with another mode: it is bound inside a
    /// private directory (mode 0700) next to `path`, narrowed and handed over, then
    /// renamed into place. (Only a path too long for that is bound in place and
    /// narrowed just after.)
    public static func bind(
        path: String,
        owner: (uid: UInt32?, gid: UInt32?)? = nil,
        group: any EventLoopGroup,
        responder: @escaping Responder
    ) -> EventLoopFuture<any Channel> {
        var status = stat()
        if lstat(path, &status) == 0, (status.st_mode & S_IFMT) != S_IFSOCK {
            return group.next().makeFailedFuture(ControlSocketError.notASocket(path))
        }
        let staging = StagingDirectory(for: path)
        let bindPath = staging?.socketPath ?? path
        return ServerBootstrap(group: group)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // Out of descriptors, pause instead of spinning on a readable listener.
                    try channel.pipeline.syncOperations.addHandler(AcceptPauseHandler())
                }
            }
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ControlRequestHandler(responder: responder))
                }
            }
            .bind(unixDomainSocketPath: bindPath, cleanupExistingSocketFile: true)
            .flatMapThrowing { channel in
                defer { staging?.remove() }
                guard chmod(bindPath, 0o600) == 0 else {
                    let error = errno
                    channel.close(promise: nil)
                    throw ControlSocketError.cannotSecure(path, error)
                }
                if let owner, owner.uid != nil || owner.gid != nil, geteuid() == 0 {
                    _ = chown(bindPath, owner.uid ?? uid_t.max, owner.gid ?? gid_t.max)
                }
                // Atomic: a stale socket at `path` is replaced in one step.
                if bindPath != path, rename(bindPath, path) != 0 {
                    let error = errno
                    channel.close(promise: nil)
                    throw ControlSocketError.cannotSecure(path, error)
                }
                return channel
            }
            .flatMapErrorThrowing { error in
                staging?.remove()
                throw error
            }
    }

    /// A private directory (mode 0700) beside a socket's path, to bind it in first.
    private struct StagingDirectory {
        let directory: String
        let socketPath: String

        /// nil if the staged path would be too long for a Unix socket, or the
        /// directory cannot be made.
        init?(for path: String) {
            let parent = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
            var template = Array("\(parent.isEmpty ? "/" : parent)/.hmx-XXXXXX".utf8CString)
            // sun_path holds 108 bytes with the terminating NUL ("/s" follows).
            guard template.count - 1 + 2 < 108 else { return nil }
            let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) != nil }
            guard made else { return nil }
            self.directory = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
            self.socketPath = self.directory + "/s"
        }

        func remove() {
            unlink(self.socketPath)
            rmdir(self.directory)
        }
    }

    /// Asks the daemon listening at `path`; waits at most `timeout`.
    public static func ask(
        _ request: Request,
        path: String,
        timeout: TimeAmount = .seconds(10)
    ) throws -> String {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let received = loop.makePromise(of: String.self)
        let connecting = ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ControlResponseHandler(promise: received))
                }
            }
            .connect(unixDomainSocketPath: path)
        let channel: any Channel
        do {
            channel = try connecting.wait()
        } catch {
            received.fail(error)
            throw error
        }
        let deadline = channel.eventLoop.scheduleTask(in: timeout) {
            received.fail(ControlSocketError.timedOut(path))
            channel.close(promise: nil)
        }
        defer { deadline.cancel() }
        var line = channel.allocator.buffer(capacity: 32)
        line.writeString(request.line + "\n")
        channel.writeAndFlush(line, promise: nil)
        return try received.futureResult.wait()
    }
}

public enum ControlSocketError: Error, CustomStringConvertible {
    case notASocket(String)
    case cannotSecure(String, CInt)
    case timedOut(String)
    case responseTooLarge(String)

    public var description: String {
        switch self {
        case .notASocket(let path): "\(path) exists and is not a socket"
        case .cannotSecure(let path, let error): "cannot set mode 0600 on \(path): \(String(cString: strerror(error)))"
        case .timedOut(let path): "no answer from \(path) in time"
        case .responseTooLarge(let path):
            "the answer from \(path) is larger than \(ControlSocket.maximumResponse) bytes"
        }
    }
}

/// The daemon's side of one control connection: one request line, one answer, close.
final class ControlRequestHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let responder: ControlSocket.Responder
    private var request: ByteBuffer?
    private var isAnswering = false
    private var timeout: Scheduled<Void>?

    init(responder: @escaping ControlSocket.Responder) {
        self.responder = responder
    }

    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        self.timeout = context.eventLoop.scheduleTask(in: ControlSocket.requestTimeout) {
            channel.close(promise: nil)
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.timeout?.cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.isAnswering else { return }
        var bytes = Self.unwrapInboundIn(data)
        if self.request == nil {
            self.request = bytes
        } else {
            self.request!.writeBuffer(&bytes)
        }
        let newline = self.request!.readableBytesView.firstIndex(of: UInt8(ascii: "\n"))
        guard let newline else {
            if self.request!.readableBytes > ControlSocket.maximumRequest {
                self.answer(context, "error: request longer than \(ControlSocket.maximumRequest) bytes\n")
            }
            return
        }
        let length = newline - self.request!.readerIndex
        guard length <= ControlSocket.maximumRequest,
            let text = self.request!.readString(length: length)
        else {
            self.answer(context, "error: request longer than \(ControlSocket.maximumRequest) bytes\n")
            return
        }
        let line = text.hasSuffix("\r") ? String(text.dropLast()) : text
        guard let request = ControlSocket.Request(line: line) else {
            self.answer(context, "error: unknown request '\(line.prefix(64))'; try: status, status json\n")
            return
        }
        self.isAnswering = true
        self.request = nil
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        self.responder(request).hop(to: context.eventLoop).whenComplete { result in
            let (handler, context) = loopBound.value
            switch result {
            case .success(let text): handler.answer(context, text)
            case .failure(let error): handler.answer(context, "error: \(error)\n")
            }
        }
    }

    /// Writes the answer and ends our side; what the client still sends is read and
    /// dropped until it closes (or the request timeout), so that it reads the answer
    /// rather than a reset.
    private func answer(_ context: ChannelHandlerContext, _ text: String) {
        self.isAnswering = true
        self.request = nil
        var buffer = context.channel.allocator.buffer(capacity: text.utf8.count)
        buffer.writeString(text)
        let channel = context.channel
        context.writeAndFlush(Self.wrapOutboundOut(buffer)).whenComplete { result in
            switch result {
            case .success: channel.close(mode: .output, promise: nil)
            case .failure: channel.close(promise: nil)
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension ControlRequestHandler: Sendable {}

/// The client's side: collects the answer until the daemon closes.
final class ControlResponseHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let promise: EventLoopPromise<String>
    private var response = ByteBuffer()

    init(promise: EventLoopPromise<String>) {
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = Self.unwrapInboundIn(data)
        guard self.response.readableBytes + bytes.readableBytes <= ControlSocket.maximumResponse else {
            self.promise.fail(ControlSocketError.responseTooLarge("the control socket"))
            context.close(promise: nil)
            return
        }
        self.response.writeBuffer(&bytes)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.promise.succeed(self.response.readString(length: self.response.readableBytes) ?? "")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.promise.fail(error)
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension ControlResponseHandler: Sendable {}
