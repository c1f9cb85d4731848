// SPDX-License-Identifier: Apache-2.0
import CHMXShims
import HMXCore
import Logging
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Accepting and attach handshakes: one thread polls the domains' listening sockets and
/// every connection that has not sent its hello yet, never blocking on any of them.
/// Each connection has its own deadline and takes one of its domain socket's
/// handshake slots (``AttachHandshakes``); a hello that passes the checks hands the
/// connection to the emulator's event loop, where ``DomainConnectionHandler``
/// attaches it and writes the welcome.
extension EmulatorServer {
    func acceptLoop() {
        var handshakes = AttachHandshakes(limits: self.limits)
        // Out of descriptors (EMFILE, ENFILE): a listener with a connection waiting stays
        // readable, so accepting pauses for a moment instead of spinning on it.
        var pausedUntil: NIODeadline?
        var isOutOfDescriptors = false
        while true {
            let listeners = self.state.withLock { state -> [UInt16: Listener]? in
                state.isRunning ? state.listeners : nil
            }
            guard let listeners else {
                for pending in handshakes.endAll(where: { _ in true }) { close(pending.fd) }
                return
            }
            // A reload removed or changed the domain: its handshakes end unanswered.
            for pending in handshakes.endAll(where: { listeners[$0.domain.id.rawValue]?.domain != $0.domain }) {
                close(pending.fd)
            }
            let now = NIODeadline.now()
            for pending in handshakes.endExpired(now: now) {
                self.refuse(pending, .malformedHello, "no hello within \(self.limits.handshakeTimeout)")
            }
            if let until = pausedUntil, until <= now { pausedUntil = nil }
            // Domains whose slots are all taken are not accepted from.
            let accepting = pausedUntil == nil ? listeners.values.filter { handshakes.hasSlot(for: $0.domain.id) } : []
            let waiting = handshakes.descriptors
            var polls = [pollfd(fd: self.wakePipe.read, events: Int16(POLLIN), revents: 0)]
            polls += accepting.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            polls += waiting.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            var timeout = handshakes.pollTimeout(now: now)
            if let until = pausedUntil {
                let pause = Int32(clamping: max(1, (until - now).nanoseconds / 1_000_000 + 1))
                timeout = timeout < 0 ? pause : min(timeout, pause)
            }
            let ready = poll(&polls, nfds_t(polls.count), timeout)
            if ready < 0 {
                if errno == EINTR { continue }
                self.logger.error("accept loop failed", metadata: ["errno": "\(errno)"])
                for pending in handshakes.endAll(where: { _ in true }) { close(pending.fd) }
                return
            }
            if polls[0].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                _ = read(self.wakePipe.read, &drain, drain.count)
            }
            for (index, listener) in accepting.enumerated() where polls[1 + index].revents != 0 && pausedUntil == nil {
                if self.accept(from: listener, into: &handshakes) {
                    isOutOfDescriptors = false
                } else {
                    // Said once until an accept succeeds again.
                    if !isOutOfDescriptors {
                        self.logger.warning(
                            "out of file descriptors: accepting pauses 100 ms at a time until one is free"
                        )
                    }
                    isOutOfDescriptors = true
                    pausedUntil = .now() + .milliseconds(100)
                }
            }
            for (index, fd) in waiting.enumerated() where polls[1 + accepting.count + index].revents != 0 {
                self.readHello(fd, handshakes: &handshakes)
            }
        }
    }

    /// Accepts one connection from a domain's socket and starts its handshake.
    /// - Returns: false if the process or the system is out of file descriptors.
    private func accept(from listener: Listener, into handshakes: inout AttachHandshakes) -> Bool {
        // The listener may have been closed by a reload in the meantime.
        let stillOpen = self.state.withLock { $0.listeners[listener.domain.id.rawValue]?.fd == listener.fd }
        guard stillOpen else { return true }
        let fd = chmx_accept_nonblock_cloexec(listener.fd)
        guard fd >= 0 else { return errno != EMFILE && errno != ENFILE }
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
        let pending = AttachHandshakes.Pending(fd: fd, domain: listener.domain, deadline: .now(), pid: 0, uid: 0)
        guard chmx_peer_credentials(fd, &pid, &uid, &gid) == 0 else {
            self.refuse(pending, .credentialsRejected, "peer credentials unavailable")
            return true
        }
        handshakes.begin(fd: fd, domain: listener.domain, pid: pid, uid: uid, now: .now())
        return true
    }

    /// Reads the hello of a connection that has something to say (or has gone), checks
    /// it, and either hands the connection over or refuses it. The hello is read before
    /// any answer, also when the uid alone refuses the process: closing a Unix socket
    /// with unread data resets it, and the process should get to read why it was refused.
    private func readHello(_ fd: Int32, handshakes: inout AttachHandshakes) {
        var bytes = [UInt8](repeating: 0, count: LinkWire.Hello.size)
        var fds: [Int32] = [-1]
        var received: Int32 = 0
        let count = bytes.withUnsafeMutableBytes { raw in
            chmx_recv_with_fds(fd, raw.baseAddress, raw.count, &fds, 1, &received)
        }
        if count < 0, errno == EAGAIN || errno == EWOULDBLOCK { return }
        guard let pending = handshakes.end(fd: fd) else { return }
        if count == 0 {
            // Gone before saying anything: nobody to answer.
            self.logger.debug("connection closed before its hello", metadata: ["domain": "\(pending.domain.id)"])
            close(fd)
            return
        }
        let memoryFD: Int32? = received == 1 ? fds[0] : nil
        let hello = bytes.withUnsafeBytes { LinkWire.Hello(parsing: $0) }
        func refuse(_ status: LinkWire.Welcome.Status, _ detail: String) {
            if let memoryFD { close(memoryFD) }
            self.refuse(pending, status, detail)
        }
        if let required = pending.domain.uid, required != pending.uid {
            return refuse(.credentialsRejected, "uid \(pending.uid) is not the configured uid \(required)")
        }
        guard count == LinkWire.Hello.size, let memoryFD, let hello else {
            return refuse(.malformedHello, count < 0 ? "cannot read the hello (errno \(errno))" : "bad hello")
        }
        guard LinkWire.supportedVersions.contains(hello.version) else {
            return refuse(.unsupportedVersion, "version \(hello.version)")
        }
        guard hello.memorySize <= UInt64(pending.domain.maximumMemory) else {
            return refuse(.badMemory, "\(hello.memorySize) bytes exceeds the limit of \(pending.domain.maximumMemory)")
        }
        let memory: SharedMemory
        do {
            memory = try SharedMemory(adopting: memoryFD, expectedSize: Int(hello.memorySize))
        } catch {
            // The descriptor is closed by the failed adoption.
            return self.refuse(pending, .badMemory, "\(error)")
        }
        self.handOver(pending, memory: memory)
    }

    /// Runs the attached connection on the emulator's event loop, with its queued
    /// output bounded by the channel's write watermarks (see ``DomainConnectionHandler``).
    private func handOver(_ pending: AttachHandshakes.Pending, memory: SharedMemory) {
        var logger = self.logger
        logger[metadataKey: "peer.pid"] = "\(pending.pid)"
        logger[metadataKey: "peer.uid"] = "\(pending.uid)"
        let core = self.core
        let domain = pending.domain
        let handlerLogger = logger
        let failureLogger = logger
        let high = self.limits.queuedOutputBytes
        let channel = ClientBootstrap(group: self.eventLoop)
            .channelOption(.allowRemoteHalfClosure, value: false)
            .channelOption(.writeBufferWaterMark, value: .init(low: high / 2, high: high))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = DomainConnectionHandler(
                        domain: domain,
                        memory: memory,
                        core: core.value,
                        logger: handlerLogger
                    )
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .withConnectedSocket(pending.fd)
        channel.whenFailure { error in
            failureLogger.warning("cannot register attached domain's socket", metadata: ["error": "\(error)"])
        }
    }

    /// Answers a refused handshake with its reason (the socket is empty but for it, so
    /// the write does not block) and closes the connection.
    private func refuse(_ pending: AttachHandshakes.Pending, _ status: LinkWire.Welcome.Status, _ detail: String) {
        self.logger.warning(
            "attach refused",
            metadata: [
                "domain": "\(pending.domain.id) (\(pending.domain.name))", "reason": "\(status)", "detail": "\(detail)",
            ]
        )
        let bytes = LinkWire.Welcome(status: status, domain: pending.domain.id).encoded()
        _ = bytes.withUnsafeBytes { raw in
            send(pending.fd, raw.baseAddress, raw.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
        }
        close(pending.fd)
    }
}
