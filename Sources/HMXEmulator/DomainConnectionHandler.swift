// SPDX-License-Identifier: Apache-2.0
import HMXCore
import Logging
import NIOCore

/// The emulator's end of one attached domain process: executes its hypercalls in
/// order and delivers its events.
///
/// Events are coalesced like an event channel's: however many times VIRQ_ARGO is
/// raised for this domain while the emulator works through one burst of hypercalls,
/// one event frame goes out with that burst's results.
///
/// Results are written at the end of each burst, except that the successes of
/// *deferrable* hypercalls (``LinkWire``) may wait, in order, for the next result that
/// cannot, the domain's next event, or ``LinkWire/deferredResultDelay``.
///
/// What waits to be written to the domain is bounded (``EmulatorLimits/queuedOutputBytes``,
/// the channel's write watermarks): while the channel is not writable (its queued output
/// above the high watermark), the handler holds back the pipeline's `read()`, so the
/// emulator takes no new hypercalls from a domain that does not read their results, as
/// a vCPU blocked in a hypercall issues no more; an event raised meanwhile is written
/// once the domain has read. Reading resumes below the low watermark. The overshoot is
/// one read burst.
final class DomainConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Where the connection is in its life. The domain is attached in the hypervisor
    /// exactly while this is `.attached`, and that state is entered before anything
    /// is written, so that a write failing inline (which closes the channel at once)
    /// still finds it and detaches.
    private enum State {
        case connecting
        case attached
        case closed
    }

    let domain: EmulatorConfig.DomainEntry
    let memory: SharedMemory
    unowned let core: EmulatorCore
    private var logger: Logger
    private var context: ChannelHandlerContext?
    private var state = State.connecting
    /// The pipeline asked to read while the channel was not writable.
    private var isReadHeld = false
    /// An event was raised while the channel was not writable.
    private var isEventOwed = false
    /// An event frame is already in `output`, not yet flushed.
    private var isEventQueued = false
    private var output: ByteBuffer
    /// `output` holds something that must go out at the end of this burst.
    private var isOutputUrgent = false
    /// A timer is armed that flushes results held back, at the latest.
    private var isDeferredFlushArmed = false
    private var splitter = LinkFrameSplitter()

    /// Bytes of results and events waiting to go to the domain.
    var queuedOutputBytes: Int { self.output.readableBytes }
    /// Hypercalls are not read from the domain until it reads its results.
    var isHeld: Bool { self.isReadHeld }

    /// A frame only the emulator may send came from the domain.
    private struct ForbiddenFrame: Error, CustomStringConvertible {
        var description: String { "the domain sent a frame only the emulator may send" }
    }

    init(domain: EmulatorConfig.DomainEntry, memory: SharedMemory, core: EmulatorCore, logger: Logger) {
        self.domain = domain
        self.memory = memory
        self.core = core
        self.logger = logger
        self.logger[metadataKey: "domain"] = "\(domain.id) (\(domain.name))"
        self.output = ByteBuffer()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.output = context.channel.allocator.buffer(capacity: 4096)
    }

    func channelActive(context: ChannelHandlerContext) {
        let accepted = self.core.attach(self)
        if accepted {
            // Before the welcome: if the process has gone, writing it closes the
            // channel inline, and channelInactive must find the domain attached.
            self.state = .attached
            self.logger.info("domain attached", metadata: ["memory.bytes": "\(self.memory.size)"])
        } else {
            self.state = .closed
            self.logger.warning("attach refused: a process is already attached as this domain")
        }
        let status: LinkWire.Welcome.Status = accepted ? .accepted : .domainAlreadyAttached
        var buffer = context.channel.allocator.buffer(capacity: LinkWire.Welcome.size)
        buffer.writeBytes(LinkWire.Welcome(status: status, domain: self.domain.id).encoded())
        context.writeAndFlush(Self.wrapOutboundOut(buffer), promise: nil)
        if !accepted { context.close(promise: nil) }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.detach()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.detach()
        self.context = nil
    }

    /// Destroys the domain if this connection attached it; the hypervisor's record of
    /// who is attached is checked too, so no path can leave it behind.
    private func detach() {
        let wasAttached = self.state == .attached
        self.state = .closed
        if self.core.detach(self) || wasAttached {
            self.logger.info("domain detached; its rings are destroyed")
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard self.state == .attached else { return }
        do {
            try self.splitter.split(Self.unwrapInboundIn(data)) { frame in try self.execute(frame) }
        } catch {
            // A malformed or forbidden frame: nothing after it is executed.
            self.logger.warning("dropping domain after a link error", metadata: ["error": "\(error)"])
            self.detach()
            context.close(promise: nil)
        }
    }

    func read(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            context.read()
        } else {
            self.isReadHeld = true
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            if self.isEventOwed {
                self.isEventOwed = false
                self.raiseEvent()
            }
            if self.isReadHeld {
                self.isReadHeld = false
                context.read()
            }
        }
        context.fireChannelWritabilityChanged()
    }

    private func execute(_ frame: LinkWire.Frame) throws {
        switch frame {
        case .hypercall(let tag, let command, let arg1, let arg2, let arg3, let arg4, let deferrable):
            let value = self.core.hypervisor.hypercall(
                caller: self.domain.id,
                command: command,
                arg1: arg1,
                arg2: arg2,
                arg3: arg3,
                arg4: arg4
            )
            self.output.writeLinkFrame(.result(tag: tag, value: value))
            if !deferrable || value < 0 { self.isOutputUrgent = true }
        case .eventAck:
            // Accepted for compatibility; events are coalesced per burst instead.
            break
        case .result, .event:
            throw ForbiddenFrame()
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.isOutputUrgent || self.isEventQueued {
            self.flushOutput()
        } else if self.output.readableBytes > 0, !self.isDeferredFlushArmed {
            // One timer at a time, never cancelled: earlier flushes only make what it
            // finds smaller, and anything held is held for less than the delay.
            self.isDeferredFlushArmed = true
            context.eventLoop.assumeIsolated().scheduleTask(in: .init(LinkWire.deferredResultDelay)) {
                self.isDeferredFlushArmed = false
                self.flushOutput()
            }
        }
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.logger.warning("dropping domain after a link error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    /// Raises VIRQ_ARGO in this domain. Like an event channel's, raises coalesce: one
    /// is queued at a time, and none while the domain is not reading its socket.
    func raiseEvent() {
        guard self.state == .attached, !self.isEventQueued else { return }
        if let context = self.context, !context.channel.isWritable {
            self.isEventOwed = true
            return
        }
        self.isEventQueued = true
        self.output.writeLinkFrame(.event)
        // Batched with the results of the hypercall being processed when we are in a
        // read burst; otherwise flushed at the end of the burst that raised it.
        self.core.scheduleFlush(self)
    }

    func flushOutput() {
        guard let context = self.context, self.output.readableBytes > 0 else { return }
        self.isEventQueued = false
        self.isOutputUrgent = false
        context.writeAndFlush(Self.wrapOutboundOut(self.output), promise: nil)
        // Reuses the storage when the write went out at once (the usual case).
        self.output.clear()
    }

    func close() {
        self.context?.close(promise: nil)
    }
}

@available(*, unavailable)
extension DomainConnectionHandler: Sendable {}
