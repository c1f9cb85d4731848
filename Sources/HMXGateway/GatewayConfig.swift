// SPDX-License-Identifier: Apache-2.0
import HMXConfig
import HMXCore
import HMXStream

/// hmx-gateway's configuration file (see docs/CONFIG.md).
public struct GatewayConfig: Sendable, Equatable {
    /// Which hypervisor the gateway talks to.
    public enum Backend: Sendable, Equatable, CustomStringConvertible {
        /// hmx-emulator: the socket of this gateway's domain.
        case emulator(socket: String)
        /// Real Xen Argo, from user space (privcmd, libxencall, libxenevtchn).
        case xen

        public var description: String {
            switch self {
            case .emulator(let socket): "emulator \(socket)"
            case .xen: "xen"
            }
        }
    }

    public struct Link: Sendable, Equatable {
        public var backend: Backend
        /// The Argo port of the gateway protocol (same on every gateway).
        public var port: HMXPort
        /// Bytes of each per-peer receive ring.
        public var ringSize: UInt32
    }

    /// Who may use an export.
    public enum Allow: Sendable, Equatable {
        case any
        case domains(Set<DomainID>)

        public func permits(_ domain: DomainID) -> Bool {
            switch self {
            case .any: true
            case .domains(let set): set.contains(domain)
            }
        }
    }

    public enum ProxyProtocol: String, Sendable, Equatable {
        case none
        case v2
    }

    /// A caller on another host, in an export's allow-list: `DOMAIN@NAME` admits the
    /// domain `DOMAIN` (`*`: any) as asserted by the remote gateway whose client
    /// certificate carries `NAME` (or whose address is `NAME`), when a domain of
    /// `relays` relays the connection.
    public struct RemoteCaller: Sendable, Equatable, CustomStringConvertible {
        /// nil: any domain behind `assertedBy`.
        public var domain: String?
        public var assertedBy: String

        public func admits(_ caller: CallerIdentity) -> Bool {
            caller.assertedBy == self.assertedBy && (self.domain == nil || self.domain == caller.domain)
        }

        public var description: String { "\(self.domain ?? "*")@\(self.assertedBy)" }
    }

    /// Who may send a PROXY v2 header to an import listener (`trusted_proxies`).
    public enum TrustedProxy: Sendable, Equatable, CustomStringConvertible {
        /// A client whose verified certificate carries this name (CN or DNS name).
        case certificate(String)
        /// A client from this address prefix.
        case address(IPNetwork)

        public var description: String {
            switch self {
            case .certificate(let name): name
            case .address(let network): "\(network)"
            }
        }
    }

    public struct Export: Sendable, Equatable {
        public var name: String
        public var port: HMXPort
        public var target: Endpoint
        public var allow: Allow
        public var maxConnections: Int
        /// Connections one peer domain may hold at once: a domain that floods an
        /// export shared with others cannot take all of its connections.
        public var maxConnectionsPerPeer: Int
        public var connectTimeoutMilliseconds: Int64
        /// A connection without traffic this long is reset (0: never).
        public var idleTimeoutMilliseconds: Int64 = 0
        public var proxyProtocol: ProxyProtocol
        /// Connections to the target come from the source domain's address in this
        /// prefix (nil: the system chooses).
        public var sourceAddress: SourceAddressPrefix? = nil
        /// For a `tls://` target.
        public var tls: TLSClientSettings? = nil
        /// Callers on other hosts the allow-list admits, through `relays`.
        public var remoteCallers: [RemoteCaller] = []
        /// Domains trusted to relay callers from other hosts: their gateways' word on
        /// who the caller is counts for `remoteCallers`.
        public var relays: Set<DomainID> = []
    }

    public struct Import: Sendable, Equatable {
        public var name: String
        public var listen: Endpoint
        public var peer: DomainID
        public var port: HMXPort
        public var maxConnections: Int
        public var idleTimeoutMilliseconds: Int64
        /// How long a new connection waits for the peer's ACCEPT or REFUSE.
        public var openTimeoutMilliseconds: Int64 = GatewayConfig.defaultOpenTimeoutMilliseconds
        /// A Unix listener's permissions and group (nil: the umask's, and the
        /// gateway's group).
        public var mode: UInt32? = nil
        public var group: String? = nil
        /// For a `tls://` listener.
        public var tls: TLSServerSettings? = nil
        /// Who may send a PROXY v2 header first (`proxy_protocol: accept`); nil: no
        /// one (a client's bytes are its own).
        public var trustedProxies: [TrustedProxy]? = nil
    }

    public var file: String
    public var link: Link
    public var peers: [String: DomainID]
    public var exports: [Export]
    public var imports: [Import]
    /// Bytes each side may send before the receiver grants more (per connection), to
    /// begin with.
    public var window: Int
    /// Largest window a connection's receiver grows to when the window, not the
    /// applications, limits it (equal to `window`: no growth).
    public var windowMax: Int
    /// Total bytes by which all connections' windows together may grow beyond
    /// `window`: with it, buffered bytes stay below connections × window + this.
    public var windowPool: Int
    /// Bytes of messages on their way to one peer's ring at once (sent, result not
    /// back); nil: what the peer's ring holds.
    public var peerInFlight: Int?
    public var metricsListen: Endpoint?
    /// How long SIGTERM waits for connections to finish.
    public var drainTimeoutMilliseconds: Int64
    /// Where the audit records go (one JSON line per connection decision and end).
    public var audit: AuditDestination? = nil
    /// The user and group the gateway runs as once it has bound its listeners and
    /// opened what needs privileges (nil: it keeps the ones it was started with).
    public var user: String? = nil
    public var group: String? = nil
    /// The local control socket `hmx-gateway status` asks (mode 0600; nil: none).
    public var controlSocket: String? = nil

    public enum AuditDestination: Sendable, Equatable, CustomStringConvertible {
        case standardError
        case file(String)

        public var description: String {
            switch self {
            case .standardError: "stderr"
            case .file(let path): path
            }
        }
    }

    public static let defaultPort: HMXPort = 4747
    /// Ring size for each backend when `link.ring_size` is not given. On Xen, ring
    /// frames come out of the domain's small balloon slack (see docs/XEN.md), so rings
    /// stay at 64 pages; an emulated domain's ring memory is the gateway's own, and a
    /// 1 MiB ring lets bulk streams use quarter-megabyte messages.
    public static func defaultRingSize(for backend: Backend) -> UInt32 {
        switch backend {
        case .emulator: ArgoABI.ringLength(fillingPages: 256)
        case .xen: ArgoABI.ringLength(fillingPages: 64)
        }
    }

    public static let defaultWindow = 256 * 1024
    /// A datagram flow without traffic this long ends (its state and the export's
    /// socket for it go away).
    public static let defaultFlowIdleTimeoutMilliseconds: Int64 = 60_000
    /// The peer's answer to OPEN comes after its dial of the target (5 s by default
    /// there); an OPEN unanswered this long was lost (the peer could not reach us).
    public static let defaultOpenTimeoutMilliseconds: Int64 = 30_000
    public static let defaultWindowMax = 4 << 20
    public static let defaultWindowPool = 64 << 20

    /// The most a window grows to here: `windowMax`, but at most twice our ring (a
    /// sender keeps at most a ring's worth on the way; a larger window only lets it
    /// overfill the ring and earn ring-full retries), and never below `window`.
    public var effectiveWindowMax: Int {
        max(self.window, min(self.windowMax, 2 * Int(self.link.ringSize)))
    }

    /// Domains this gateway talks to: import targets and the named domains of
    /// allow-lists. One partner ring is registered for each.
    public var partnerDomains: Set<DomainID> {
        var domains = Set(self.imports.map(\.peer))
        for export in self.exports {
            if case .domains(let set) = export.allow { domains.formUnion(set) }
            domains.formUnion(export.relays)
        }
        return domains
    }

    /// True if some export accepts any domain (then a wildcard ring is wanted).
    public var wantsWildcardRing: Bool { self.exports.contains { $0.allow == .any } }

    /// The name `peers:` gives `domain`, if any.
    public func peerName(of domain: DomainID) -> String? {
        self.peers.first { $0.value == domain }?.key
    }

    public func name(of domain: DomainID) -> String {
        self.peerName(of: domain).map { "\($0)(\(domain))" } ?? "\(domain)"
    }
}

// MARK: - Admission

extension GatewayConfig {
    /// Whether an OPEN from `peer` (the domain the hypervisor stamped on the message)
    /// for `servicePort` may have a connection: the export, its allow-list, its
    /// connection limit and its limit per peer.
    /// - Parameter counts: connections open now for a mapping (`export:NAME`): in all,
    ///   and those of one peer.
    /// - Returns: the export, or why the OPEN is refused.
    /// - Parameter datagram: a datagram flow (DGRAM) rather than a connection (OPEN):
    ///   each finds only exports of its kind.
    /// - Parameter caller: who the OPEN says the caller on another host is; believed
    ///   only from the export's `relays`.
    public func admission(
        of peer: DomainID,
        to servicePort: UInt32,
        datagram: Bool = false,
        records: Bool = false,
        caller: CallerIdentity? = nil,
        counts: (_ mapping: String, _ peer: DomainID) -> (all: Int, peer: Int)
    ) -> Admission {
        guard let export = self.exports.first(where: { $0.port == servicePort }),
            export.target.isDatagram == datagram, export.target.isRecords == records
        else {
            return .refused(.noSuchService)
        }
        if let caller, export.relays.contains(peer) {
            // A relay's caller from another host: judged by who it is, here again.
            guard export.remoteCallers.contains(where: { $0.admits(caller) }) else {
                return .refused(.deniedByGateway, export: export.name)
            }
        } else {
            // Anyone else's word on a caller counts for nothing: the stamped domain.
            guard export.allow.permits(peer) else { return .refused(.deniedByGateway, export: export.name) }
        }
        let (all, ofPeer) = counts("export:\(export.name)", peer)
        guard all < export.maxConnections, ofPeer < export.maxConnectionsPerPeer else {
            return .refused(.limitReached, export: export.name)
        }
        return .admitted(export)
    }

    /// What ``admission(of:to:counts:)`` decided.
    public enum Admission: Equatable, Sendable {
        case admitted(Export)
        /// Refused; `export` names the export that refused (nil: none at that port).
        case refused(StreamFrame.RefuseReason, export: String? = nil)
    }
}
