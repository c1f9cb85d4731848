// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXStream
import Logging

// MARK: - What the log says

extension Gateway {
    /// A connection ended abnormally: one line, at a level that matches who is at fault.
    func log(_ end: ConnectionEnd, of id: ConnectionID) {
        let logger = self.connections[id]?.logger ?? self.connectionLogger(id, mapping: "-")
        switch end {
        case .refusedByPeer(let reason):
            logger.warning("connection refused by the peer gateway", metadata: ["reason": "\(reason)"])
        case .refusedHere(let reason):
            if let dialError = self.connections[id]?.dialError {
                logger.warning("connection refused", metadata: ["reason": "\(reason)", "error": "\(dialError)"])
            } else {
                logger.warning("connection refused", metadata: ["reason": "\(reason)"])
            }
        case .resetByPeer(let reason):
            logger.info("connection reset by the peer", metadata: ["reason": "\(reason)"])
        case .violation(let violation):
            logger.warning("peer violated the stream protocol; resetting the connection", metadata: ["violation": "\(violation)"])
        case .localReset:
            logger.debug("local connection reset")
        case .openTimedOut:
            logger.warning("no answer from the peer to the connection's OPEN; resetting it")
        case .terminated(.idleTimeout):
            logger.info("idle timeout")
        case .terminated(.noRing):
            logger.info("connection opened before our ring for the peer existed; its answer could not reach us")
        case .terminated(let outcome):
            logger.debug("connection ended", metadata: ["reason": "\(outcome.rawValue)"])
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
            self.logger.warning(
                "cannot send to peer; ending its connections",
                metadata: [
                    "peer": "\(self.config.name(of: domain))", "error": "\(cause)", "reason": "\(outcome.rawValue)",
                    "connections": "\(count)",
                ]
            )
        case .peerRestarted(let domain, let count):
            self.logger.warning(
                "peer gateway restarted; resetting its old connections",
                metadata: ["peer": "\(self.config.name(of: domain))", "connections": "\(count)"]
            )
        case .malformed(let domain, let reason):
            self.logger.warning(
                "malformed message from peer; its connections are reset",
                metadata: ["peer": "\(self.config.name(of: domain))", "error": "\(reason)"]
            )
        case .reusedConnectionID(let id):
            self.logger.warning(
                "peer reused a live connection id; resetting it",
                metadata: ["peer": "\(self.config.name(of: id.peer))", "connection": "\(id.key)"]
            )
        case .ringCorrupt(let domain, let error):
            self.logger.error("a ring was corrupt and has been flushed", metadata: ["ring": "\(domain)", "error": "\(error)"])
        }
    }
}
