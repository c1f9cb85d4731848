// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXEmulator
import HMXStream
import HMXTestSupport
import NIOCore
import NIOEmbedded

/// Two gateways (domains 1 and 2) and, optionally, a hostile third domain, on the
/// in-process hypervisor, driven step by step by a seeded scheduler.
///
/// Each step is one thing that can happen in any order in the real system: a
/// domain's next hypercall runs (or its result comes back), a wake-up is delivered, the
/// event loop runs its queued work, time passes, an application reads or writes or
/// closes, a dial completes; and, more rarely, a fault: an application aborts, a
/// gateway's process dies and starts again, time jumps past the keepalive timeout, the
/// hostile domain writes crafted frames. After every step the invariants hold;
/// afterwards, with faults stopped, everything must settle: every stream delivered
/// exactly what was sent, in order, or both applications saw a reset, and no
/// connection is left in either gateway.
final class Simulation {
    struct Options {
        var streams = 10
        var maximumStreamBytes = 40_000  // At most 1 MiB (the noise the streams are cut from).
        var steps = 3000
        var ringSize: UInt32 = 16_384
        var window = 16_384
        var maximumWindow = 65_536
        var faults = true
        var hostile = true
        /// Hypercalls complete at once, as on Xen (otherwise they wait for the
        /// scheduler, as with the emulator).
        var immediateLinks = false
    }

    var linkMode: InProcessLink.Mode { self.options.immediateLinks ? .immediate : .scheduled }

    static let port = HMXPort(4747)
    static let servicePort: UInt32 = 7
    static let hostileDomain = DomainID(3)

    let seed: UInt64
    let options: Options
    var random: SimulationRandom
    let loop = EmbeddedEventLoop()
    let hypervisor: InProcessHypervisor
    private(set) var gateways: [SimulatedGateway] = []
    private var generations: [Int] = [0, 0]
    var plans: [UInt64: StreamPlan] = [:]
    /// Every client application, by serial.
    var clients: [UInt64: SimulatedApp] = [:]
    /// Streams a fault touched: a clean end is not owed to them.
    var faulted: Set<UInt64> = []
    var hostileLink: InProcessLink?
    private(set) var violations: [String] = []
    private(set) var log: [String] = []
    private var nextSerial: UInt64 = 1

    init(seed: UInt64, options: Options = Options()) throws {
        self.seed = seed
        self.options = options
        self.random = SimulationRandom(seed: seed)
        self.hypervisor = InProcessHypervisor(eventLoop: self.loop, wildcardRingsAllowed: true)
        for (index, name) in ["alpha", "beta"].enumerated() {
            let domain = DomainID(UInt16(index + 1))
            let link = try self.hypervisor.attach(domain, name: name, ringMemoryBytes: 1 << 20, mode: self.linkMode)
            let gateway = SimulatedGateway(
                domain: domain,
                name: name,
                link: link,
                configuration: self.driverConfiguration,
                exportedPorts: [Self.servicePort],
                plans: { [unowned self] in self.plans }
            )
            gateway.onRefused = { [unowned self, unowned gateway] id in self.markFaulted(client: id, on: gateway) }
            gateway.record = { [unowned self] line in self.record(line) }
            self.gateways.append(gateway)
        }
        if options.hostile {
            self.hostileLink = try self.hypervisor.attach(
                Self.hostileDomain,
                name: "mallory",
                ringMemoryBytes: 1 << 20,
                mode: .immediate
            )
        }
        for gateway in self.gateways { self.start(gateway) }
    }

    deinit {
        for gateway in self.gateways {
            gateway.driver.delegate = nil
            gateway.driver.stop()
        }
        try? self.loop.syncShutdownGracefully()
        // Closed links let go of their drivers (each domain's memory is a memfd).
        for domain in [DomainID(1), DomainID(2), Self.hostileDomain] where self.hypervisor.link(of: domain) != nil {
            self.hypervisor.destroy(domain)
        }
    }

    var driverConfiguration: StreamDriver.Configuration {
        StreamDriver.Configuration(
            port: Self.port,
            ringSize: self.options.ringSize,
            multiplexer: StreamMultiplexer.Configuration(
                window: self.options.window,
                maximumWindow: self.options.maximumWindow,
                windowPool: 4 * self.options.maximumWindow,
                framesPerRound: 64
            )
        )
    }

    private func start(_ gateway: SimulatedGateway) {
        let other = DomainID(gateway.domain.rawValue == 1 ? 2 : 1)
        // beta also takes any domain (the hostile one reaches it through its wildcard ring).
        let driver = gateway.driver
        gateway.driver.start(partners: [other], wildcard: gateway.domain == DomainID(2)).assumeIsolated().whenSuccess {
            [weak gateway] in
            if gateway?.driver === driver { gateway?.isReady = true }
        }
    }

    func record(_ line: String) {
        self.log.append(line)
        if self.log.count > 4000 { self.log.removeFirst(1000) }
    }

    // MARK: - Faults and bookkeeping

    private func markFaulted(client id: ConnectionID, on gateway: SimulatedGateway) {
        if let app = gateway.apps[id], let plan = app.plan { self.faulted.insert(plan.serial) }
    }

    /// Every stream not finished yet.
    func markLiveStreamsFaulted() {
        for (serial, client) in self.clients where !client.isDone { self.faulted.insert(serial) }
        for gateway in self.gateways {
            for app in gateway.apps.values + gateway.detached where !app.isDone {
                if let plan = app.plan { self.faulted.insert(plan.serial) }
            }
        }
    }

    func restart(_ index: Int) throws {
        let gateway = self.gateways[index]
        self.record("restart \(gateway.name)")
        self.markLiveStreamsFaulted()
        self.hypervisor.destroy(gateway.domain)
        self.generations[index] += 1
        let link = try self.hypervisor.attach(
            gateway.domain,
            name: gateway.name,
            ringMemoryBytes: 1 << 20,
            mode: self.linkMode
        )
        gateway.restart(link: link, configuration: self.driverConfiguration, generation: self.generations[index])
        self.start(gateway)
    }

    /// A new stream from one gateway's client to the other's export.
    func openStream() {
        // Both gateways up (an OPEN to a peer whose ring for us does not exist yet is
        // refused at once: ECONNREFUSED, as when the peer's gateway is not running).
        // After a restart, the other gateway's ring for the restarted one is gone (Argo
        // destroys rings naming a destroyed domain) until it notices: OPENs meanwhile
        // are refused too. A client would retry; the simulation waits.
        let ringsExist =
            self.hypervisor.hypervisor.ringExists(owner: DomainID(1), port: Self.port, partner: DomainID(2))
            && self.hypervisor.hypervisor.ringExists(owner: DomainID(2), port: Self.port, partner: DomainID(1))
        guard ringsExist, self.gateways.allSatisfy(\.isReady), let gateway = self.random.pick(self.gateways) else {
            return
        }
        let serial = self.nextSerial
        self.nextSerial += 1
        let plan = StreamPlan(
            serial: serial,
            clientBytes: self.random.int(0...self.options.maximumStreamBytes),
            serverBytes: self.random.int(0...self.options.maximumStreamBytes)
        )
        self.plans[serial] = plan
        let app = SimulatedApp(client: plan)
        self.clients[serial] = app
        let peer = DomainID(gateway.domain.rawValue == 1 ? 2 : 1)
        let id = gateway.driver.open(
            to: peer,
            servicePort: Self.servicePort,
            idleTimeout: nil,
            openTimeout: .seconds(30)
        )
        gateway.apps[id] = app
        gateway.driver.attach(app, to: id)
        // An import's socket is readable at once; the driver asks once accepted.
        self.record("open \(serial) on \(gateway.name) as \(id): \(plan.clientBytes)/\(plan.serverBytes) bytes")
    }

    /// What the run did: streams and how they ended, bytes, virtual time.
    var summary: String {
        let ends = self.clients.values.map { "\($0.end.map { "\($0)" } ?? "open")" }
        let counts = Dictionary(grouping: ends, by: { $0 }).mapValues(\.count)
        let bytes = self.allApps.reduce(0) { $0 + $1.receivedCount }
        return
            "seed \(self.seed): \(self.clients.count) streams \(counts), \(bytes) bytes checked, \(self.faulted.count) faulted, "
            + "virtual time \(self.loop.now.uptimeNanoseconds / 1_000_000) ms"
    }

    // MARK: - Invariants

    /// What must hold after every step.
    func checkInvariants() {
        for gateway in self.gateways {
            if !gateway.violations.isEmpty { self.violations += gateway.violations }
            for (id, state) in gateway.driver.connections {
                if state.flow.sendCredit < 0 || state.flow.receiveAllowance < 0 {
                    self.violations.append("\(gateway.name) \(id): negative credit \(state.flow)")
                }
                if state.undeliveredBytes < 0 || state.undeliveredBytes > state.flow.window {
                    self.violations.append(
                        "\(gateway.name) \(id): \(state.undeliveredBytes) bytes undelivered, window \(state.flow.window)"
                    )
                }
                if state.heldBytes > 2 * 65_536 {
                    self.violations.append("\(gateway.name) \(id): holds \(state.heldBytes) bytes")
                }
            }
            let pool = gateway.driver.statistics.windowPoolInUse
            if pool > 4 * self.options.maximumWindow || pool < 0 {
                self.violations.append("\(gateway.name): window pool \(pool)")
            }
            for app in gateway.apps.values where !app.violations.isEmpty { self.violations += app.violations }
            for app in gateway.detached where !app.violations.isEmpty { self.violations += app.violations }
        }
        if !self.violations.isEmpty { self.violations = Array(Set(self.violations)).sorted() }
    }

    var allApps: [SimulatedApp] {
        Array(self.clients.values)
            + self.gateways.flatMap { gateway in
                gateway.apps.values.filter { $0.role == .server } + gateway.detached.filter { $0.role == .server }
            }
    }

    /// What must hold once everything settled.
    func checkSettled() {
        for gateway in self.gateways where gateway.driver.activeConnectionCount > 0 {
            let states = gateway.driver.connections.map { "\($0.key): \($0.value.phase)" }.sorted()
            self.violations.append(
                "\(gateway.name): \(gateway.driver.activeConnectionCount) connections linger: \(states.prefix(4))"
            )
        }
        for (serial, client) in self.clients.sorted(by: { $0.key < $1.key }) {
            if client.end == nil { self.violations.append("stream \(serial): the client never ended") }
            if !self.faulted.contains(serial), client.end != .closed {
                self.violations.append(
                    "stream \(serial): no fault, but the client ended with \(String(describing: client.end))"
                )
            }
        }
        for gateway in self.gateways {
            for app in gateway.apps.values + gateway.detached where app.end == nil {
                self.violations.append(
                    "\(gateway.name): a \(app.role) application never ended (stream \(app.plan?.serial ?? 0))"
                )
            }
        }
        self.violations = Array(Set(self.violations)).sorted()
    }
}
