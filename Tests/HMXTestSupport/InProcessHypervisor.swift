// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXEmulator
import Logging
import NIOEmbedded

/// The emulator's ``ArgoHypervisor`` in the test's own thread, with one
/// ``InProcessLink`` per attached domain, all on one `EmbeddedEventLoop`.
///
/// Nothing runs unless the test makes it run: no sockets, no processes, no threads.
/// Hypercalls still take their arguments from each domain's own memory, laid out by
/// ``ArgoArguments`` as the emulator link does, so the hypervisor's argument checks,
/// ring lookup, EAGAIN with pending wake-ups, and domain teardown are the real ones.
///
/// Events (VIRQ_ARGO) that the hypervisor raises during a hypercall are held until the
/// hypercall returns and then handed to the links in the order raised (once per link
/// per hypercall, as the interrupt coalesces): a handler never runs inside the
/// hypervisor, so it may issue hypercalls itself.
///
/// Single-threaded: use it only on the thread that created the event loop (a
/// synchronous test function).
public final class InProcessHypervisor {
    public let hypervisor: ArgoHypervisor
    public let eventLoop: EmbeddedEventLoop
    private var links: [DomainID: InProcessLink] = [:]
    private var isInHypercall = false
    /// Domains that got an event during the current hypercall, in order, each once.
    private var raised: [DomainID] = []

    /// Bytes of each domain's staging area: enough for any sendv Argo accepts (one
    /// message is at most 16 MiB). Domain memory is a sparse memfd, so untouched
    /// staging costs nothing.
    public static let stagingBytes = 17 << 20

    /// The default policy: every domain may send to every port.
    public static let allowEverything = EmulatorPolicy(rules: [
        EmulatorPolicy.Rule(from: nil, to: nil, port: .any, action: .allow)
    ])

    /// - Parameters:
    ///   - wildcardRingsAllowed: Xen's `mac-permissive`: rings with partner
    ///     ``DomainID/any`` may be registered.
    ///   - policy: who may send to whom (default: everything allowed).
    public init(
        eventLoop: EmbeddedEventLoop,
        wildcardRingsAllowed: Bool = false,
        policy: EmulatorPolicy = InProcessHypervisor.allowEverything
    ) {
        self.eventLoop = eventLoop
        // The hypervisor keeps its event closure for its lifetime; the router keeps
        // `self` weakly so that the two do not keep each other alive.
        let router = EventRouter()
        self.hypervisor = ArgoHypervisor(
            settings: ArgoHypervisor.Settings(wildcardRingsAllowed: wildcardRingsAllowed, policy: policy),
            logger: Logger(label: "hmx-in-process-hypervisor", factory: { _ in SwiftLogNoOpLogHandler() }),
            raiseEvent: { id in router.owner?.eventRaised(in: DomainID(id)) }
        )
        router.owner = self
    }

    // MARK: - Domains

    /// Creates the domain in the hypervisor (with its own memory: a NULL page, staging,
    /// then `ringMemoryBytes` of ring pages, like ``EmulatorLink``'s) and returns its
    /// link.
    /// - Throws: ``HMXError`` `.attachRefused` if the domain is attached already or
    ///   the id is reserved; `.resourceExhausted` if the memory cannot be created.
    public func attach(
        _ domain: DomainID,
        name: String,
        ringMemoryBytes: Int = 16 << 20,
        mode: InProcessLink.Mode = .immediate
    ) throws -> InProcessLink {
        guard domain.isOrdinary else {
            throw HMXError(code: .attachRefused, message: "domain id \(domain) is reserved")
        }
        guard self.links[domain] == nil, !self.hypervisor.domainExists(domain) else {
            throw HMXError(code: .attachRefused, message: "domain \(domain) is attached already")
        }
        let pageSize = ArgoABI.pageSize
        let stagingBytes = (Self.stagingBytes + pageSize - 1) / pageSize * pageSize
        let ringBytes = (ringMemoryBytes + pageSize - 1) / pageSize * pageSize
        let memory = try SharedMemory(creating: pageSize + stagingBytes + ringBytes, name: "hmx-in-process-\(name)")
        guard self.hypervisor.createDomain(id: domain, name: name, memory: memory) else {
            throw HMXError(code: .attachRefused, message: "domain \(domain) is attached already")
        }
        self.hypervisor.domainNames[domain.rawValue] = name
        let link = InProcessLink(
            owner: self,
            domain: domain,
            memory: memory,
            stagingBase: pageSize,
            stagingSize: stagingBytes,
            mode: mode
        )
        self.links[domain] = link
        return link
    }

    /// The domain's process died: the hypervisor destroys it (its rings, other
    /// domains' rings that name it as partner, its waits for space), and its link
    /// closes (see ``InProcessLink``). ``attach(_:name:ringMemoryBytes:mode:)`` may
    /// then give the same id a fresh link, as a restarted process would get.
    public func destroy(_ domain: DomainID) {
        precondition(!self.isInHypercall, "destroy() inside a hypercall")
        self.hypervisor.destroyDomain(id: domain)
        self.raised.removeAll { $0 == domain }
        self.links.removeValue(forKey: domain)?.closed()
    }

    deinit {
        // A link's owner (a StreamDriver) holds the link, whose event handler holds the
        // owner: without this, every test's domains and their memory (a memfd each)
        // would stay for the rest of the test process.
        for link in self.links.values { link.dropEventHandler() }
    }

    /// The current link of an attached domain.
    public func link(of domain: DomainID) -> InProcessLink? {
        self.links[domain]
    }

    // MARK: - Hypercalls and events

    /// Runs one hypercall for `caller` with arguments already in its staging area;
    /// `decode` reads the results before any event handler runs (a handler may issue
    /// the caller's next request, which reuses staging).
    func run<Value>(_ caller: DomainID, _ call: ArgoArguments.Hypercall, decode: (Int64) -> Value) -> Value {
        precondition(!self.isInHypercall, "a hypercall inside a hypercall")
        self.isInHypercall = true
        let rc = self.hypervisor.hypercall(
            caller: caller,
            command: call.command,
            arg1: call.arg1,
            arg2: call.arg2,
            arg3: call.arg3,
            arg4: call.arg4
        )
        let result = decode(rc)
        self.isInHypercall = false
        self.deliverRaisedEvents()
        return result
    }

    private func eventRaised(in domain: DomainID) {
        if self.isInHypercall {
            if !self.raised.contains(domain) { self.raised.append(domain) }
        } else {
            self.links[domain]?.eventRaised()
        }
    }

    private func deliverRaisedEvents() {
        // A handler may run hypercalls of its own, which append to `raised` and
        // deliver them; take one at a time so that nothing is handed out twice.
        while !self.raised.isEmpty {
            let domain = self.raised.removeFirst()
            self.links[domain]?.eventRaised()
        }
    }
}

@available(*, unavailable)
extension InProcessHypervisor: Sendable {}

/// Points the hypervisor's event closure back at its owner without a retain cycle.
private final class EventRouter {
    weak var owner: InProcessHypervisor?
}
