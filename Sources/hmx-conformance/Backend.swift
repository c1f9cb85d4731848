// SPDX-License-Identifier: Apache-2.0
import ArgumentParser
import HMXCore
import HMXEmulator
import HMXXen
import NIOCore

/// Which hypervisor the links go to.
enum BackendKind: String, ExpressibleByArgument, CaseIterable {
    /// Real Xen Argo through /dev/xen (XenLink).
    case xen
    /// hmx-emulator through its domain sockets (EmulatorLink).
    case emulator
}

struct BackendOptions: ParsableArguments {
    @Option(help: "xen (this domain, through /dev/xen) or emulator (through --socket).")
    var backend: BackendKind

    @Option(help: "Emulator: the socket of the domain under test.")
    var socket: String?

    @Option(help: "Emulator: the socket of a second domain (enables the two-domain checks).")
    var peerSocket: String?

    @Option(help: "Xen: this domain's id, if xenstore cannot tell (0 in dom0).")
    var domid: UInt16?

    func validate() throws {
        switch self.backend {
        case .emulator:
            guard self.socket != nil else { throw ValidationError("--backend emulator needs --socket") }
            guard self.domid == nil else { throw ValidationError("--domid is for --backend xen") }
        case .xen:
            guard self.socket == nil, self.peerSocket == nil else {
                throw ValidationError("--socket and --peer-socket are for --backend emulator")
            }
        }
    }

    /// Xen: the pages this domain holds (XENMEM_current_reservation); nil otherwise.
    func reservedPages() -> Int? {
        self.backend == .xen ? XenLink.currentReservationPages() : nil
    }

    /// Opens the primary link, and the peer if asked for and available. Exits with
    /// status 2 (and the reason) if the backend cannot be used.
    func open(peer wantPeer: Bool) async throws -> OpenLinks {
        do {
            switch self.backend {
            case .xen:
                let link = try await XenLink.open(
                    configuration: .init(localDomain: self.domid.map { DomainID(rawValue: $0) })
                )
                return OpenLinks(
                    primary: link,
                    peer: nil,
                    description:
                        "xen, domain \(link.localDomain), \(link.guestType) guest, frames via \(link.frameMethod)"
                )
            case .emulator:
                let primary = try await EmulatorLink.attach(socketPath: self.socket!)
                var peer: EmulatorLink?
                if wantPeer, let peerSocket = self.peerSocket {
                    do {
                        peer = try await EmulatorLink.attach(socketPath: peerSocket)
                    } catch {
                        _ = try? await primary.close().get()
                        throw error
                    }
                }
                var description = "emulator, domain \(primary.localDomain)"
                if let peer { description += ", peer domain \(peer.localDomain)" }
                return OpenLinks(primary: primary, peer: peer, description: description)
            }
        } catch {
            printError("hmx-conformance: cannot open the \(self.backend.rawValue) backend: \(error)")
            throw ExitCode(2)
        }
    }
}

/// The links a run uses.
struct OpenLinks: Sendable {
    var primary: any HMXRawHypercalls
    var peer: (any HMXRawHypercalls)?
    var description: String

    func close() async {
        _ = try? await self.primary.close().get()
        if let peer = self.peer { _ = try? await peer.close().get() }
    }
}
