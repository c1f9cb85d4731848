// SPDX-License-Identifier: Apache-2.0
import ArgumentParser
import HMXCore
import HMXXen
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Prints the Xen Argo probe and, when Argo is usable, proves the link end to end.
@main
struct HMXXenProbe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hmx-xen-probe",
        abstract: "Diagnose Xen Argo and check the XenLink backend.",
        discussion: """
            Without --peer: probe, then register a ring, send a message to this domain and \
            read it back, checking the source domain Xen stamped. With --peer DOMID: \
            exchange messages with the same command running in domain DOMID, both ways. \
            Exit status: 0 success, 1 check failed, 2 Argo not usable here.
            """
    )

    @Option(help: "Exchange messages with this domain (run the same in both domains).")
    var peer: UInt16?

    @Option(help: "Argo port of the probe's ring.")
    var port: UInt32 = 0x484D_5800

    @Option(help: "Ring data length in bytes.")
    var ringLength: UInt32 = ArgoABI.ringLength(fillingPages: 1)

    @Option(help: "This domain's id, if xenstore cannot tell.")
    var domid: UInt16?

    @Option(help: "Seconds to wait for messages.")
    var timeout: Int64 = 60

    @Flag(help: "Only print the probe result.")
    var probeOnly = false

    func run() async throws {
        let probe = XenLink.probe()
        print(probe)
        guard probe.status == .usable else { throw ExitCode(2) }
        if self.probeOnly { return }
        let link = try await XenLink.open(configuration: .init(localDomain: self.domid.map { DomainID(rawValue: $0) }))
        print("link: domid \(link.localDomain), guest \(link.guestType), frames via \(link.frameMethod)")
        let outcome: Swift.Result<Void, any Error>
        do {
            if let peer = self.peer {
                try await ProbeExchange(
                    link: link,
                    port: self.port,
                    ringLength: self.ringLength,
                    timeout: .seconds(self.timeout)
                )
                .exchange(with: DomainID(peer))
            } else {
                try await ProbeExchange(
                    link: link,
                    port: self.port,
                    ringLength: self.ringLength,
                    timeout: .seconds(self.timeout)
                )
                .loopback()
            }
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        try await link.close().get()
        print("link closed (rings unregistered)")
        switch outcome {
        case .success:
            print(self.peer == nil ? "HMX-XEN-PROBE-LOOPBACK-OK" : "HMX-XEN-PROBE-EXCHANGE-OK")
        case .failure(let error):
            print("HMX-XEN-PROBE-FAIL: \(error)")
            throw ExitCode(1)
        }
    }
}
