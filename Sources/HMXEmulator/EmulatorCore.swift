// SPDX-License-Identifier: Apache-2.0
import HMXCore
import Logging
import NIOCore

/// Everything the emulator does on its event loop: the hypervisor state and the
/// attached domains' connections. Confined to that one loop, which serialises all
/// hypercalls like a global lock.
final class EmulatorCore {
    let hypervisor: ArgoHypervisor
    let eventLoop: any EventLoop
    private var connections: [UInt16: DomainConnectionHandler] = [:]
    private var needsFlush: [DomainConnectionHandler] = []
    private var isFlushScheduled = false

    init(settings: ArgoHypervisor.Settings, eventLoop: any EventLoop, logger: Logger) {
        self.eventLoop = eventLoop
        var raise: ((UInt16) -> Void)?
        self.hypervisor = ArgoHypervisor(settings: settings, logger: logger) { id in raise?(id) }
        raise = { [unowned self] id in self.connections[id]?.raiseEvent() }
    }

    /// Creates the domain for a newly connected process; false if it is already attached.
    func attach(_ connection: DomainConnectionHandler) -> Bool {
        let id = connection.domain.id
        guard self.connections[id.rawValue] == nil,
            self.hypervisor.createDomain(
                id: id,
                name: connection.domain.name,
                memory: connection.memory,
                argoEnabled: connection.domain.argo
            )
        else { return false }
        self.connections[id.rawValue] = connection
        return true
    }

    /// Destroys the domain of a process that went away, if `connection` is the one
    /// attached as it (a refused connection for the same domain is not).
    /// - Returns: whether it was.
    @discardableResult
    func detach(_ connection: DomainConnectionHandler) -> Bool {
        let id = connection.domain.id
        guard self.connections[id.rawValue] === connection else { return false }
        self.connections[id.rawValue] = nil
        self.hypervisor.destroyDomain(id: id)
        return true
    }

    /// Drops the process attached as `id`, if any.
    func disconnect(_ id: DomainID) {
        self.connections[id.rawValue]?.close()
    }

    func disconnectAll() {
        for connection in self.connections.values { connection.close() }
    }

    var attachedDomains: [DomainID] { self.connections.keys.sorted().map { DomainID($0) } }

    /// The attached process of `id`, if any (for status).
    func connection(of id: DomainID) -> DomainConnectionHandler? { self.connections[id.rawValue] }

    /// Flushes a connection's pending output at the end of this loop tick, so that
    /// events raised during a burst of hypercalls go out in one write.
    func scheduleFlush(_ connection: DomainConnectionHandler) {
        self.needsFlush.append(connection)
        if self.isFlushScheduled { return }
        self.isFlushScheduled = true
        self.eventLoop.assumeIsolated().execute {
            self.isFlushScheduled = false
            let connections = self.needsFlush
            self.needsFlush.removeAll(keepingCapacity: true)
            for connection in connections { connection.flushOutput() }
        }
    }
}

@available(*, unavailable)
extension EmulatorCore: Sendable {}
