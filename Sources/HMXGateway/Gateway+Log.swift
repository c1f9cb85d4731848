// SPDX-License-Identifier: Apache-2.0
import CoreMetrics
import HMXCore
import HMXStream
import Logging

// MARK: - What the log says

extension Gateway {
    /// Writes a warning another domain provoked unless that peer had its share of the
    /// log for this kind (see ``WarningLimiter``); `write` gets the number of warnings
    /// left out before this one.
    func limited(_ kind: WarningLimiter.Kind, from peer: DomainID, _ write: (_ suppressed: Int) -> Void) {
        switch self.warnings.admit(kind, from: peer, now: self.driver.now) {
        case .log(let suppressed): write(suppressed)
        case .suppress: self.metrics.warningsSuppressed.increment()
        }
    }

    /// Says how many warnings were left out, once their interval is over.
    func reportSuppressedWarnings() {
        for (key, count) in self.warnings.expired(now: self.driver.now) {
            self.logger.warning(
                "similar warnings suppressed",
                metadata: [
                    "peer": "\(self.config.name(of: key.peer))", "kind": "\(key.kind.rawValue)",
                    "suppressed": "\(count)",
                ]
            )
        }
    }

    /// A connection ended abnormally: one line, at a level that matches who is at fault.
    func log(_ end: ConnectionEnd, of id: ConnectionID) {
        let connection = self.connections[id]
        func logger(_ suppressed: Int) -> Logger {
            var logger = connection?.logger ?? self.connectionLogger(id, mapping: "-")
            if suppressed > 0 { logger[metadataKey: "suppressed"] = "\(suppressed)" }
            return logger
        }
        switch end {
        case .refusedByPeer(let reason):
            logger(0).warning("connection refused by the peer gateway", metadata: ["reason": "\(reason)"])
        case .refusedHere(let reason):
            // Refused before any dial (the peer asked for what it may not have): logged
            // at admission, where the export is known.
            if let dialError = connection?.dialError {
                var metadata: Logger.Metadata = ["reason": "\(reason)", "error": "\(dialError)"]
                if let outcome = connection?.localOutcome { metadata["outcome"] = "\(outcome.rawValue)" }
                logger(0).warning("connection refused", metadata: metadata)
            }
        case .resetByPeer(let reason):
            self.limited(.reset, from: id.peer) {
                logger($0).info("connection reset by the peer", metadata: ["reason": "\(reason)"])
            }
        case .violation(let violation):
            self.limited(.violation, from: id.peer) {
                logger($0).warning(
                    "peer violated the stream protocol; resetting the connection",
                    metadata: ["violation": "\(violation)"]
                )
            }
        case .localReset:
            logger(0).debug("local connection reset")
        case .openTimedOut:
            logger(0).warning("no answer from the peer to the connection's OPEN; resetting it")
        case .terminated(.idleTimeout):
            logger(0).info("idle timeout")
        case .terminated(.noRing):
            // The peer has no ring for us (ECONNREFUSED), or the connection was opened
            // before our ring for the peer existed and its answer could not reach us.
            logger(0).info("connection ended: a ring on the way was missing", metadata: ["reason": "no_ring"])
        case .terminated(let outcome):
            logger(0).debug("connection ended", metadata: ["reason": "\(outcome.rawValue)"])
        }
    }

    func log(_ notice: StreamNotice) {
        switch notice {
        case .ringRegistered(let domain):
            self.logger.info("ring registered for peer", metadata: ["peer": "\(self.config.name(of: domain))"])
        case .ringRestored(let domain):
            self.logger.warning(
                "our ring for the peer was gone (its domain was destroyed); registered it again",
                metadata: ["peer": "\(self.config.name(of: domain))"]
            )
        case .ringRegistrationFailed(let domain, let errno):
            self.logger.error(
                "cannot register the ring for a peer",
                metadata: ["peer": "\(self.config.name(of: domain))", "error": "\(errno.map(\.name) ?? "link closed")"]
            )
        case .wildcardRingFailed(let errno, let error):
            let names = self.config.exports.filter { $0.allow == .any }.map(\.name).joined(separator: ", ")
            if errno == .EPERM {
                // Xen refuses wildcard rings unless booted with mac-permissive=1. The
                // gateway keeps running: partner rings still carry every named peer.
                self.logger.error(
                    """
                    the hypervisor refused the wildcard ring (EPERM) that exports [\(names)] need to accept any domain: \
                    on Xen, wildcard rings need the hypervisor booted with argo=1,mac-permissive=1; until then only \
                    domains with a partner ring (import peers and domains named in an allow-list) can reach those exports
                    """,
                    metadata: ["error": "\(error)"]
                )
            } else {
                self.logger.error(
                    "cannot register the wildcard ring that exports [\(names)] need to accept any domain",
                    metadata: ["error": "\(error)"]
                )
            }
        case .peerFailed(let domain, let outcome, let cause, let count):
            // A domain that writes to our wildcard ring and has no ring for our answers
            // (or never drains it) fails every time it is answered.
            self.limited(.peerFailed, from: domain) { suppressed in
                self.logger.warning(
                    "cannot send to peer; ending its connections",
                    metadata: [
                        "peer": "\(self.config.name(of: domain))", "error": "\(cause)",
                        "reason": "\(outcome.rawValue)", "connections": "\(count)", "suppressed": "\(suppressed)",
                    ]
                )
            }
        case .peerRestarted(let domain, let count):
            self.limited(.restarted, from: domain) { suppressed in
                self.logger.warning(
                    "peer gateway restarted; resetting its old connections",
                    metadata: [
                        "peer": "\(self.config.name(of: domain))", "connections": "\(count)",
                        "suppressed": "\(suppressed)",
                    ]
                )
            }
        case .malformed(let domain, let reason):
            self.limited(.malformed, from: domain) { suppressed in
                self.logger.warning(
                    "malformed message from peer; its connections are reset",
                    metadata: [
                        "peer": "\(self.config.name(of: domain))", "error": "\(reason)", "suppressed": "\(suppressed)",
                    ]
                )
            }
        case .reusedConnectionID(let id):
            self.limited(.reusedConnectionID, from: id.peer) { suppressed in
                self.logger.warning(
                    "peer reused a live connection id; resetting it",
                    metadata: [
                        "peer": "\(self.config.name(of: id.peer))", "connection": "\(id.key)",
                        "suppressed": "\(suppressed)",
                    ]
                )
            }
        case .ringCorrupt(let domain, let error):
            self.logger.error(
                "a ring was corrupt and has been flushed",
                metadata: ["ring": "\(domain)", "error": "\(error)"]
            )
        }
    }
}
