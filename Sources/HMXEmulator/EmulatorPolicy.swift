// SPDX-License-Identifier: Apache-2.0
import HMXCore

/// The emulator's firewall: which domain may send to which domain and port.
///
/// Rules are tried in order; the first match decides; no match denies. It is applied
/// where Xen applies its XSM `argo send` hook: on sendv, and on every notify entry
/// (a guest learns nothing about rings it may not send to). A denial returns EACCES,
/// as Flask does.
public struct EmulatorPolicy: Sendable, Equatable {
    public enum Action: String, Sendable, Equatable {
        case allow
        case deny
    }

    /// A set of ports: any, one, or an inclusive range.
    public enum PortMatch: Sendable, Equatable, CustomStringConvertible {
        case any
        case range(ClosedRange<UInt32>)

        func matches(_ port: UInt32) -> Bool {
            switch self {
            case .any: true
            case .range(let range): range.contains(port)
            }
        }

        public var description: String {
            switch self {
            case .any: "any"
            case .range(let range):
                range.lowerBound == range.upperBound ? "\(range.lowerBound)" : "\(range.lowerBound)-\(range.upperBound)"
            }
        }
    }

    public struct Rule: Sendable, Equatable {
        /// `nil` matches any domain.
        public var from: DomainID?
        public var to: DomainID?
        public var port: PortMatch
        public var action: Action

        public init(from: DomainID?, to: DomainID?, port: PortMatch, action: Action) {
            self.from = from
            self.to = to
            self.port = port
            self.action = action
        }
    }

    public var rules: [Rule]

    public init(rules: [Rule]) {
        self.rules = rules
    }

    /// True if `source` may send to port `port` of `destination`.
    public func allows(source: DomainID, destination: DomainID, port: UInt32) -> Bool {
        for rule in self.rules {
            if let from = rule.from, from != source { continue }
            if let to = rule.to, to != destination { continue }
            if !rule.port.matches(port) { continue }
            return rule.action == .allow
        }
        return false
    }
}
