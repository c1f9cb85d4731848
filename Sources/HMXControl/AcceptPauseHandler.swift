// SPDX-License-Identifier: Apache-2.0
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Pauses a listener for a moment when accepting fails for want of resources (out of
/// file descriptors, EMFILE/ENFILE; ENOBUFS, ENOMEM), instead of retrying at once.
///
/// A listener with a client waiting stays readable, so without a pause the event loop
/// spins on a failing `accept4`. SwiftNIO's `AcceptBackoffHandler` delays the next
/// `read()`, but after a failed accept the server channel still has its read pending and
/// stays registered for readability, so it keeps accepting on its own. Turning
/// `autoRead` off takes the listener out of the poll set until the pause is over;
/// clients wait in the kernel's backlog meanwhile.
public final class AcceptPauseHandler: ChannelInboundHandler {
    public typealias InboundIn = Any

    private let pause: TimeAmount
    private let onPause: (IOError) -> Void
    private var isPaused = false

    /// - Parameter onPause: called for every failed accept (to count and log it).
    public init(pause: TimeAmount = .milliseconds(100), onPause: @escaping (IOError) -> Void = { _ in }) {
        self.pause = pause
        self.onPause = onPause
    }

    public static func isResourceShortage(_ error: IOError) -> Bool {
        [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(error.errnoCode)
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let error = error as? IOError, Self.isResourceShortage(error) else {
            context.fireErrorCaught(error)
            return
        }
        self.onPause(error)
        guard !self.isPaused, let options = context.channel.syncOptions else { return }
        self.isPaused = true
        try? options.setOption(.autoRead, value: false)
        context.eventLoop.assumeIsolated().scheduleTask(in: self.pause) {
            self.isPaused = false
            // Registers for readability again and accepts what waits.
            try? context.channel.syncOptions?.setOption(.autoRead, value: true)
        }
    }
}

@available(*, unavailable)
extension AcceptPauseHandler: Sendable {}
