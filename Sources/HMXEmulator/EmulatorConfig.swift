// SPDX-License-Identifier: Apache-2.0
import HMXConfig
import HMXCore

/// The emulator's configuration file: its domains (who may attach as which domain,
/// and where) and the hypervisor settings (Argo on, wildcard rings, firewall).
///
/// ```yaml
/// mac_permissive: false          # allow wildcard rings (Xen: argo=1,mac-permissive=1)
/// domains:
///   - {id: 1, name: web, socket: /run/hmx/web.sock, uid: 1000}
///   - {id: 2, name: db,  socket: /run/hmx/db.sock}
/// policy:                        # first match wins, default deny
///   - {action: allow, from: web, to: db, port: 5432}
///   - {action: allow, from: db, to: web}
/// ```
public struct EmulatorConfig: Sendable, Equatable {
    public struct DomainEntry: Sendable, Equatable {
        public var id: DomainID
        public var name: String
        /// The Unix socket a process connects to in order to act as this domain.
        public var socketPath: String
        /// If set, only processes running as this uid may attach.
        public var uid: UInt32?
        /// False models a domain without Argo state (every operation: ENODEV).
        public var argo: Bool
        /// Upper bound of the memory this domain's process may bring (bytes).
        public var maximumMemory: Int
    }

    public var file: String
    public var argoEnabled: Bool
    public var wildcardRingsAllowed: Bool
    public var domains: [DomainEntry]
    public var policy: EmulatorPolicy
    /// The local control socket `hmx-emulator status` asks (mode 0600; nil: none).
    public var controlSocket: String? = nil
    /// The user and group the emulator runs as once its sockets are bound and given to
    /// their domains' users (nil: it keeps the ones it was started with).
    public var user: String? = nil
    public var group: String? = nil

    public var settings: ArgoHypervisor.Settings {
        ArgoHypervisor.Settings(
            argoEnabled: self.argoEnabled,
            wildcardRingsAllowed: self.wildcardRingsAllowed,
            policy: self.policy
        )
    }

    public static let defaultMaximumMemoryMiB = 1024

    /// Loads and validates a configuration file.
    public static func load(path: String) throws(ConfigError) -> EmulatorConfig {
        try self.decode(ConfigNode.load(path: path))
    }

    /// Parses configuration text (`file` names it in errors).
    public static func parse(_ text: String, file: String) throws(ConfigError) -> EmulatorConfig {
        try self.decode(ConfigNode.parse(text, file: file))
    }

    /// Decodes an already parsed file (as ``ConfigNode/parse(_:file:)`` gives it).
    /// Checks against the domains seen so far (ids, names and sockets used twice, the
    /// domains rules name) use sets and dictionaries, so that decoding stays linear in
    /// the size of the file.
    public static func decode(_ root: ConfigNode) throws(ConfigError) -> EmulatorConfig {
        let top = try root.mapping()
        let argo = try top.optional("argo")?.bool() ?? true
        let wildcard = try top.optional("mac_permissive")?.bool() ?? false
        let memoryMiB =
            try top.optional("max_memory_mib")?.integer(Int.self, in: 1...65536) ?? Self.defaultMaximumMemoryMiB
        let domainsNode = try top.required("domains")
        var domains: [DomainEntry] = []
        var index = DomainIndex()
        var sockets: Set<String> = []
        for node in try domainsNode.sequence() {
            let entry = try node.mapping()
            let idNode = try entry.required("id")
            let id = try idNode.integer(UInt16.self, in: 0...0x7FEF)
            let nameNode = try entry.required("name")
            let name = try nameNode.string()
            guard Self.isValidName(name) else {
                throw nameNode.error("names are 1-64 letters, digits, '-', '_' or '.', not starting with a digit")
            }
            let socketNode = try entry.required("socket")
            let socket = try socketNode.string()
            guard !socket.isEmpty, socket.utf8.count < 108 else {
                throw socketNode.error("a socket path must be non-empty and shorter than 108 bytes")
            }
            let uid = try entry.optional("uid")?.integer(UInt32.self, in: 0...UInt32.max - 1)
            let domainArgo = try entry.optional("argo")?.bool() ?? true
            let domainMemory = try entry.optional("max_memory_mib")?.integer(Int.self, in: 1...65536) ?? memoryMiB
            try entry.finish(known: ["id", "name", "socket", "uid", "argo", "max_memory_mib"])
            guard index.byID[id] == nil else { throw idNode.error("domain id \(id) is used twice") }
            guard index.byName[name] == nil else { throw nameNode.error("domain name '\(name)' is used twice") }
            guard sockets.insert(socket).inserted else {
                throw socketNode.error("socket path is used by another domain")
            }
            index.byID[id] = DomainID(id)
            index.byName[name] = DomainID(id)
            domains.append(
                DomainEntry(
                    id: DomainID(id),
                    name: name,
                    socketPath: socket,
                    uid: uid,
                    argo: domainArgo,
                    maximumMemory: domainMemory << 20
                )
            )
        }
        if domains.isEmpty { throw domainsNode.error("at least one domain is needed") }
        var rules: [EmulatorPolicy.Rule] = []
        if let policyNode = top.optional("policy") {
            for node in try policyNode.sequence() {
                rules.append(try Self.decodeRule(node, domains: index))
            }
        }
        let controlSocket = try top.optional("control_socket")?.socketPath()
        let user = try top.optional("user")?.string()
        let group = try top.optional("group")?.string()
        try top.finish(known: [
            "argo", "mac_permissive", "max_memory_mib", "domains", "policy", "control_socket", "user", "group",
        ])
        return EmulatorConfig(
            file: root.file,
            argoEnabled: argo,
            wildcardRingsAllowed: wildcard,
            domains: domains,
            policy: EmulatorPolicy(rules: rules),
            controlSocket: controlSocket,
            user: user,
            group: group
        )
    }

    /// The configured domains by id and by name, for rules to name them.
    struct DomainIndex {
        var byID: [UInt16: DomainID] = [:]
        var byName: [String: DomainID] = [:]
    }

    static func decodeRule(_ node: ConfigNode, domains: DomainIndex) throws(ConfigError) -> EmulatorPolicy.Rule {
        let entry = try node.mapping()
        let actionNode = try entry.required("action")
        guard let action = EmulatorPolicy.Action(rawValue: try actionNode.string()) else {
            throw actionNode.error("expected allow or deny")
        }
        let from =
            try entry.optional("from").map { node throws(ConfigError) in try Self.decodeDomain(node, domains: domains) }
            ?? nil
        let to =
            try entry.optional("to").map { node throws(ConfigError) in try Self.decodeDomain(node, domains: domains) }
            ?? nil
        let port = try entry.optional("port").map { node throws(ConfigError) in try Self.decodePort(node) } ?? .any
        try entry.finish(known: ["action", "from", "to", "port"])
        return EmulatorPolicy.Rule(from: from, to: to, port: port, action: action)
    }

    /// A domain by name or id, or `any` (returned as `nil`).
    static func decodeDomain(_ node: ConfigNode, domains: DomainIndex) throws(ConfigError) -> DomainID? {
        let text = try node.string()
        if text == "any" { return nil }
        if let id = domains.byName[text] { return id }
        if let value = UInt16(text), let id = domains.byID[value] { return id }
        throw node.error("unknown domain '\(text)' (not in domains)")
    }

    /// `any`, a port, or an inclusive range `low-high`.
    static func decodePort(_ node: ConfigNode) throws(ConfigError) -> EmulatorPolicy.PortMatch {
        let text = try node.string()
        if text == "any" { return .any }
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        if parts.count == 1, let port = parseInteger(parts[0], as: UInt32.self) { return .range(port...port) }
        if parts.count == 2, let low = parseInteger(parts[0], as: UInt32.self),
            let high = parseInteger(parts[1], as: UInt32.self),
            low <= high
        {
            return .range(low...high)
        }
        throw node.error("expected a port, a range LOW-HIGH, or any; found '\(text)'")
    }

    static func isValidName(_ name: String) -> Bool {
        guard (1...64).contains(name.utf8.count), let first = name.utf8.first,
            !(UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first)
        else { return false }
        return name.utf8.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
                || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "-")
                || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".")
        }
    }

    /// Looks a domain up by name or decimal id.
    public func domain(named text: String) -> DomainEntry? {
        if let entry = self.domains.first(where: { $0.name == text }) { return entry }
        if let id = UInt16(text) { return self.domains.first { $0.id.rawValue == id } }
        return nil
    }
}
