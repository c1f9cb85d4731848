// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXStream
import HMXTestSupport
import NIOCore

/// One gateway of the simulation: a real ``StreamDriver`` on an in-process link, with
/// simulated applications for its sockets. It stands where the real gateway's glue
/// stands: it admits OPENs (dialling takes a simulation step), executes the driver's
/// socket actions on the applications, and reports their events back.
final class SimulatedGateway: StreamDriverDelegate {
    let domain: DomainID
    let name: String
    private(set) var link: InProcessLink
    private(set) var driver: StreamDriver
    /// Applications by connection, while the driver knows the connection.
    var apps: [ConnectionID: SimulatedApp] = [:]
    /// Applications whose connection the driver forgot, still finishing their writes.
    var detached: [SimulatedApp] = []
    /// Admitted OPENs whose dial has not completed.
    var pendingDials: [ConnectionID] = []
    /// Connections whose removal the driver reported (for the lingering check).
    private(set) var removedCount = 0
    /// The driver's rings had their first answers (a real gateway opens its listeners then).
    var isReady = false
    /// Service ports this gateway exports.
    let exportedPorts: Set<UInt32>
    /// Called with client connections whose stream was refused (their stream is faulted).
    var onRefused: ((ConnectionID) -> Void)?
    /// Where notable actions are recorded (the replay log).
    var record: ((String) -> Void)?
    /// Knows the plans, for servers that read a serial.
    let plans: () -> [UInt64: StreamPlan]
    private(set) var violations: [String] = []

    init(
        domain: DomainID,
        name: String,
        link: InProcessLink,
        configuration: StreamDriver.Configuration,
        exportedPorts: Set<UInt32>,
        plans: @escaping () -> [UInt64: StreamPlan]
    ) {
        self.domain = domain
        self.name = name
        self.link = link
        self.exportedPorts = exportedPorts
        self.plans = plans
        self.driver = StreamDriver(
            link: link,
            configuration: configuration,
            instance: UInt64(domain.rawValue) << 32 | 1
        )
        self.driver.delegate = self
    }

    /// The process died and starts again: every socket it held is reset, the new run
    /// attaches again with a new instance id.
    func restart(link: InProcessLink, configuration: StreamDriver.Configuration, generation: Int) {
        self.driver.delegate = nil
        self.driver.stop()
        for app in self.apps.values { app.reset() }
        for app in self.detached { app.reset() }
        self.apps.removeAll()
        self.detached.removeAll()
        self.pendingDials.removeAll()
        self.link = link
        self.isReady = false
        self.driver = StreamDriver(
            link: link,
            configuration: configuration,
            instance: UInt64(self.domain.rawValue) << 32 | UInt64(generation + 1)
        )
        self.driver.delegate = self
    }

    /// The applications in a fixed order (a dictionary's order changes between runs).
    var sortedApps: [(ConnectionID, SimulatedApp)] {
        self.apps.sorted {
            ($0.key.key.id, $0.key.key.openedLocally ? 1 : 0, $0.key.peer.rawValue) < (
                $1.key.key.id, $1.key.key.openedLocally ? 1 : 0, $1.key.peer.rawValue
            )
        }
        .map { ($0.key, $0.value) }
    }

    // MARK: - StreamDriverDelegate

    func admit(_ id: ConnectionID, servicePort: UInt32) -> StreamDriver.Admission {
        guard self.exportedPorts.contains(servicePort) else { return .refuse(.noSuchService) }
        self.pendingDials.append(id)
        return .dial()
    }

    func perform(_ action: StreamAction) {
        switch action {
        case .ended, .notice, .openRefused, .opened, .removed:
            self.record?("\(self.name): \(action)")
        default:
            break
        }
        switch action {
        case .write, .read, .shutdownOutput, .abort:
            self.violations.append("\(self.name): a socket action reached the delegate: \(action)")
        case .ended(let id, let end):
            if case .refusedByPeer = end { self.onRefused?(id) }
            if case .refusedHere = end { self.pendingDials.removeAll { $0 == id } }
        case .removed(let id):
            self.removedCount += 1
            // The socket stays with the application; the driver no longer hears of it.
            guard let app = self.apps.removeValue(forKey: id) else { return }
            if !app.isDone, !app.isEOFPending {
                // Removed while the application still expects bytes: it must have been
                // told (reset or EOF); a silent removal would leave it hanging.
                self.violations.append("\(self.name): \(id) removed while its application waits")
            }
            self.detached.append(app)
        case .datagram, .datagramClosed:
            // The simulated gateways have no datagram mappings: a hostile peer's
            // datagrams go nowhere (the gateway's own handling is tested on its own).
            break
        case .opened, .openRefused, .notice, .incomingOpen, .registerRing, .registerRingLater, .queryMessageSize,
            .ringLost:
            break
        }
    }

    func turnEnded(_ statistics: StreamStatistics) {}
}
