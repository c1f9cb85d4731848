// SPDX-License-Identifier: Apache-2.0
import HMXConfig
import HMXCore

// The configuration file, read with FILE:LINE: KEY: REASON errors (docs/CONFIG.md).
extension GatewayConfig {
    // MARK: - Loading

    public static func load(path: String) throws(ConfigError) -> GatewayConfig {
        try self.decode(ConfigNode.load(path: path))
    }

    public static func parse(_ text: String, file: String) throws(ConfigError) -> GatewayConfig {
        try self.decode(ConfigNode.parse(text, file: file))
    }

    /// Decodes an already parsed file (as ``ConfigNode/parse(_:file:)`` gives it).
    /// Checks that need the entries seen so far (names and ports used twice) use sets
    /// and dictionaries, so that decoding stays linear in the size of the file.
    public static func decode(_ root: ConfigNode) throws(ConfigError) -> GatewayConfig {
        let top = try root.mapping()
        let linkNode = try top.required("link")
        let link = try linkNode.mapping()
        let emulatorNode = link.optional("emulator")
        let xenNode = link.optional("xen")
        let backend: Backend
        switch (emulatorNode, try xenNode?.bool() ?? false) {
        case (let node?, false): backend = .emulator(socket: try node.string())
        case (nil, true): backend = .xen
        case (_?, true): throw linkNode.error("give either emulator: SOCKET or xen: true, not both")
        case (nil, false):
            throw linkNode.error("say which hypervisor: emulator: SOCKET (hmx-emulator) or xen: true (real Xen Argo)")
        }
        let port = try link.optional("port")?.integer(UInt32.self, in: 0...UInt32.max) ?? Self.defaultPort
        let ringNode = link.optional("ring_size")
        let ringSize =
            try ringNode?.integer(UInt32.self, in: 4032...ArgoABI.maximumUsableRingLength)
            ?? Self.defaultRingSize(for: backend)
        if let ringNode, ringSize % 16 != 0 { throw ringNode.error("must be a multiple of 16") }
        try link.finish(known: ["emulator", "xen", "port", "ring_size"])

        var peers: [String: DomainID] = [:]
        var peerNames: [DomainID: String] = [:]
        if let peersNode = top.optional("peers") {
            let mapping = try peersNode.mapping()
            for (name, node) in mapping.all() {
                guard Self.isValidName(name) else {
                    throw node.error("peer names are letters, digits, '-', '_' or '.'")
                }
                let id = DomainID(try node.integer(UInt16.self, in: 0...0x7FEF))
                if let other = peerNames[id] {
                    throw node.error("domain \(id) is already named '\(other)'")
                }
                peers[name] = id
                peerNames[id] = name
            }
        }
        func domain(_ node: ConfigNode) throws(ConfigError) -> DomainID {
            let text = try node.string()
            if let id = peers[text] { return id }
            if let value = UInt16(text), value <= 0x7FEF { return DomainID(value) }
            throw node.error("unknown peer '\(text)' (name it under peers, or give a domain id)")
        }

        var exports: [Export] = []
        var exportPorts: Set<HMXPort> = []
        var exportNames: Set<String> = []
        for node in try (top.optional("exports")?.sequence() ?? []) {
            let entry = try node.mapping()
            let nameNode = try entry.required("name")
            let name = try nameNode.string()
            let portNode = try entry.required("port")
            let servicePort = try portNode.integer(UInt32.self, in: 0...UInt32.max)
            let target = try Self.endpoint(try entry.required("target"))
            let allowNode = try entry.required("allow")
            var allowed: Set<DomainID> = []
            var any = false
            var remoteCallers: [RemoteCaller] = []
            for item in try allowNode.sequence() {
                let text = try item.string()
                if text == "any" {
                    any = true
                } else if text.contains("@") {
                    remoteCallers.append(try Self.remoteCaller(item))
                } else {
                    allowed.insert(try domain(item))
                }
            }
            if !any && allowed.isEmpty && remoteCallers.isEmpty {
                throw allowNode.error("allow needs at least one peer, or [any]")
            }
            var relays: Set<DomainID> = []
            let relaysNode = entry.optional("relays")
            for item in try relaysNode?.sequence() ?? [] { relays.insert(try domain(item)) }
            if !remoteCallers.isEmpty, relays.isEmpty {
                throw allowNode.error(
                    "\(remoteCallers[0]) is a caller on another host: name the domains that relay such callers under relays"
                )
            }
            if let relaysNode, remoteCallers.isEmpty {
                throw relaysNode.error("relays are for callers on other hosts (DOMAIN@NAME in allow); there are none")
            }
            if let relaysNode, target.isDatagram {
                throw relaysNode.error("callers on other hosts reach stream targets only")
            }
            let maxConnections = try entry.optional("max_connections")?.integer(Int.self, in: 1...1_000_000) ?? 1024
            // Shared by several domains, one of them may hold half of it by default.
            let isShared = any || allowed.count > 1
            let perPeerNode = entry.optional("max_connections_per_peer")
            let perPeer =
                try perPeerNode?.integer(Int.self, in: 1...1_000_000)
                ?? (isShared ? max(1, maxConnections / 2) : maxConnections)
            if let perPeerNode, perPeer > maxConnections {
                throw perPeerNode.error("must be at most max_connections (\(maxConnections))")
            }
            let connectTimeoutNode = entry.optional("connect_timeout")
            let timeout =
                try connectTimeoutNode.map { node throws(ConfigError) in try Self.duration(node) } ?? 5000
            let idle = try Self.idleTimeout(entry, datagram: target.isDatagram)
            if target.isDatagram, let connectTimeoutNode {
                throw connectTimeoutNode.error("a datagram target is not connected to; leave connect_timeout out")
            }
            let proxyNode = entry.optional("proxy_protocol")
            let proxy: ProxyProtocol
            if let proxyNode {
                guard let value = ProxyProtocol(rawValue: try proxyNode.string()) else {
                    throw proxyNode.error("expected v2 or none")
                }
                proxy = value
                if value == .v2, target.isDatagram {
                    throw proxyNode.error("PROXY v2 is for stream targets; a datagram target gets the datagrams alone")
                }
                if value == .v2, case .seqpacket = target {
                    throw proxyNode.error("PROXY v2 is for byte streams; a seqpacket target gets its records alone")
                }
            } else {
                proxy = .none
            }
            var sourceAddress: SourceAddressPrefix?
            if let node = entry.optional("source_address") {
                switch SourceAddressPrefix.parse(try node.string()) {
                case .success(let prefix): sourceAddress = prefix
                case .failure(let malformed): throw node.error(malformed.reason)
                }
                let host: String
                switch target {
                case .tcp(let name, _), .tls(let name, _), .udp(let name, _): host = name
                case .unix, .vsock, .unixDatagram, .seqpacket:
                    throw node.error(
                        "only for tcp:// and udp:// targets (a Unix or vsock target has no IP source address)"
                    )
                }
                let hostIsIPv6 = host.contains(":")
                let hostIsIPv4 = !hostIsIPv6 && host.allSatisfy { $0.isNumber || $0 == "." }
                if (hostIsIPv6 && !sourceAddress!.isIPv6) || (hostIsIPv4 && sourceAddress!.isIPv6) {
                    throw node.error(
                        "\(sourceAddress!) and the target \(target) are not of the same address family"
                    )
                }
                if hostIsIPv4, sourceAddress!.bytes[0] == 127, !host.hasPrefix("127.") {
                    throw node.error(
                        "a loopback source (\(sourceAddress!)) reaches only loopback targets; give a prefix of this host's addresses for \(target)"
                    )
                }
            }
            let tls = try Self.clientTLS(entry, target: target)
            try entry.finish(known: [
                "name", "port", "target", "allow", "max_connections", "max_connections_per_peer", "connect_timeout",
                "idle_timeout", "proxy_protocol", "source_address", "tls", "relays",
            ])
            guard exportPorts.insert(servicePort).inserted else {
                throw portNode.error("port \(servicePort) is exported twice")
            }
            guard exportNames.insert(name).inserted else { throw nameNode.error("export name '\(name)' is used twice") }
            exports.append(
                Export(
                    name: name,
                    port: servicePort,
                    target: target,
                    allow: any ? .any : .domains(allowed),
                    maxConnections: maxConnections,
                    maxConnectionsPerPeer: perPeer,
                    connectTimeoutMilliseconds: timeout,
                    idleTimeoutMilliseconds: idle,
                    proxyProtocol: proxy,
                    sourceAddress: sourceAddress,
                    tls: tls,
                    remoteCallers: remoteCallers,
                    relays: relays
                )
            )
        }

        var imports: [Import] = []
        var importListeners: Set<Endpoint> = []
        var importNames: Set<String> = []
        for node in try (top.optional("imports")?.sequence() ?? []) {
            let entry = try node.mapping()
            let nameNode = try entry.required("name")
            let name = try nameNode.string()
            let listenNode = try entry.required("listen")
            let listen = try Self.endpoint(listenNode)
            let peer = try domain(try entry.required("peer"))
            let servicePort = try entry.required("port").integer(UInt32.self, in: 0...UInt32.max)
            let maxConnections = try entry.optional("max_connections")?.integer(Int.self, in: 1...1_000_000) ?? 1024
            let idle = try Self.idleTimeout(entry, datagram: listen.isDatagram)
            let openNode = entry.optional("open_timeout")
            if listen.isDatagram, let openNode {
                throw openNode.error("a datagram import opens no connection; leave open_timeout out")
            }
            // A Unix listener's permissions, as systemd's SocketMode= and SocketGroup=.
            var mode: UInt32?
            let modeNode = entry.optional("mode")
            if let modeNode {
                let text = try modeNode.string()
                guard text.count >= 3, text.count <= 4, let value = UInt32(text, radix: 8), value <= 0o777 else {
                    throw modeNode.error("expected permissions in octal, like \"0660\"; found '\(text)'")
                }
                mode = value
            }
            let groupNode = entry.optional("group")
            let socketGroup = try groupNode?.string()
            switch listen {
            case .unix, .unixDatagram, .seqpacket: break
            case .tcp, .tls, .udp, .vsock:
                if let node = modeNode ?? groupNode {
                    throw node.error("only for a Unix listener (unix:, unixgram:, seqpacket:)")
                }
            }
            let open =
                try openNode.map { node throws(ConfigError) in try Self.duration(node) }
                ?? Self.defaultOpenTimeoutMilliseconds
            if let openNode, open == 0 { throw openNode.error("must be longer than 0") }
            let tls = try Self.serverTLS(entry, listen: listen)
            let trustedProxies = try Self.trustedProxies(entry, listen: listen, tls: tls)
            try entry.finish(known: [
                "name", "listen", "peer", "port", "max_connections", "idle_timeout", "open_timeout", "mode", "group",
                "tls", "proxy_protocol", "trusted_proxies",
            ])
            guard importListeners.insert(listen).inserted else {
                throw listenNode.error("\(listen) is listened on twice")
            }
            guard importNames.insert(name).inserted else { throw nameNode.error("import name '\(name)' is used twice") }
            imports.append(
                Import(
                    name: name,
                    listen: listen,
                    peer: peer,
                    port: servicePort,
                    maxConnections: maxConnections,
                    idleTimeoutMilliseconds: idle,
                    openTimeoutMilliseconds: open,
                    mode: mode,
                    group: socketGroup,
                    tls: tls,
                    trustedProxies: trustedProxies
                )
            )
        }

        var window = Self.defaultWindow
        var drain: Int64 = 10_000
        var peerInFlight: Int?
        var windowMax: Int?
        var windowPool = Self.defaultWindowPool
        if let limitsNode = top.optional("limits") {
            let limits = try limitsNode.mapping()
            window = try limits.optional("window")?.integer(Int.self, in: 4096...(64 << 20)) ?? window
            if let node = limits.optional("window_max") {
                let value = try node.integer(Int.self, in: 4096...(64 << 20))
                if value < window { throw node.error("must be at least limits.window (\(window))") }
                windowMax = value
            }
            windowPool = try limits.optional("window_pool")?.integer(Int.self, in: 0...(1 << 40)) ?? windowPool
            drain =
                try limits.optional("drain_timeout").map { node throws(ConfigError) in try Self.duration(node) }
                ?? drain
            peerInFlight = try limits.optional("peer_in_flight")?.integer(Int.self, in: 4096...(64 << 20))
            try limits.finish(known: ["window", "window_max", "window_pool", "drain_timeout", "peer_in_flight"])
        }
        var metrics: Endpoint?
        if let metricsNode = top.optional("metrics") {
            let mapping = try metricsNode.mapping()
            let listenNode = try mapping.required("listen")
            metrics = try Self.endpoint(listenNode)
            switch metrics! {
            case .tcp, .unix, .vsock: break
            case .tls, .udp, .unixDatagram, .seqpacket:
                throw listenNode.error("metrics are served over HTTP: give tcp://, unix: or vsock://")
            }
            try mapping.finish(known: ["listen"])
        }
        var audit: AuditDestination?
        if let auditNode = top.optional("audit") {
            let text = try auditNode.string()
            switch text {
            case "stderr": audit = .standardError
            case _ where text.hasPrefix("/"): audit = .file(text)
            default: throw auditNode.error("give stderr or an absolute file path")
            }
        }
        let user = try top.optional("user")?.string()
        let group = try top.optional("group")?.string()
        let controlSocket = try top.optional("control_socket")?.socketPath()
        try top.finish(known: [
            "link", "peers", "exports", "imports", "limits", "metrics", "audit", "user", "group", "control_socket",
        ])
        return GatewayConfig(
            file: root.file,
            link: Link(backend: backend, port: port, ringSize: ringSize),
            peers: peers,
            exports: exports,
            imports: imports,
            window: window,
            windowMax: windowMax ?? max(window, Self.defaultWindowMax),
            windowPool: windowPool,
            peerInFlight: peerInFlight,
            metricsListen: metrics,
            drainTimeoutMilliseconds: drain,
            audit: audit,
            user: user,
            group: group,
            controlSocket: controlSocket
        )
    }

    /// `idle_timeout`: none by default for streams; datagram flows always expire (60 s
    /// by default), since nothing else tells that a flow is over.
    static func idleTimeout(_ entry: ConfigMapping, datagram: Bool) throws(ConfigError) -> Int64 {
        guard let node = entry.optional("idle_timeout") else {
            return datagram ? Self.defaultFlowIdleTimeoutMilliseconds : 0
        }
        let value = try Self.duration(node)
        if datagram, value == 0 { throw node.error("a datagram flow needs an idle timeout to end; give one above 0") }
        return value
    }

    static func endpoint(_ node: ConfigNode) throws(ConfigError) -> Endpoint {
        switch Endpoint.parse(try node.string()) {
        case .success(let endpoint): return endpoint
        case .failure(let malformed): throw node.error(malformed.reason)
        }
    }

    /// `250ms`, `5s`, `2m`, `1h`, or a plain number of seconds.
    static func duration(_ node: ConfigNode) throws(ConfigError) -> Int64 {
        let text = try node.string()
        let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            if let value = Int64(text.dropLast(suffix.count)), value >= 0, value < Int64.max / scale {
                return value * scale
            }
        }
        if let seconds = Int64(text), seconds >= 0, seconds < Int64.max / 1000 { return seconds * 1000 }
        throw node.error("expected a duration like 500ms, 5s, 2m or 1h; found '\(text)'")
    }

    static func isValidName(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count)
            && name.utf8.allSatisfy { byte in
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
                    || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                    || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "-")
                    || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".")
            }
    }
}
