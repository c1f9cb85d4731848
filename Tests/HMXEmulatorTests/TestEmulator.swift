// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXCore
import HMXEmulator
import HMXProcessTestSupport
import Logging
import NIOCore
import NIOPosix

/// An emulator running in this test process on fresh sockets in a temporary folder.
final class TestEmulator: Sendable {
    let directory: String
    let server: EmulatorServer
    let config: EmulatorConfig

    /// - Parameters:
    ///   - domains: ids of the domains to configure (named d1, d2, ...).
    ///   - policy: YAML policy lines; default allows everything.
    init(
        domains: [UInt16] = [1, 2],
        macPermissive: Bool = true,
        policy: String = "  - {action: allow}",
        extra: String = "",
        domainExtra: [UInt16: String] = [:]
    ) throws {
        self.directory = NSTemporaryDirectory() + "hmx-test-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
        let text = Self.yaml(
            directory: self.directory,
            domains: domains,
            macPermissive: macPermissive,
            policy: policy,
            extra: extra,
            domainExtra: domainExtra
        )
        self.config = try EmulatorConfig.parse(text, file: "test.yaml")
        var logger = Logger(label: "test-emulator")
        logger.logLevel = .critical
        self.server = try EmulatorServer(config: self.config, logger: logger)
        try self.server.start()
    }

    static func yaml(
        directory: String,
        domains: [UInt16],
        macPermissive: Bool,
        policy: String,
        extra: String = "",
        domainExtra: [UInt16: String] = [:]
    ) -> String {
        var text = "mac_permissive: \(macPermissive)\n\(extra)domains:\n"
        for id in domains {
            text +=
                "  - {id: \(id), name: d\(id), socket: \(directory)/d\(id).sock\(domainExtra[id].map { ", " + $0 } ?? "")}\n"
        }
        text += "policy:\n\(policy)\n"
        return text
    }

    func socket(_ id: UInt16) -> String { "\(self.directory)/d\(id).sock" }

    func attach(_ id: UInt16, configuration: EmulatorLink.Configuration = .init()) async throws -> EmulatorLink {
        try await EmulatorLink.attach(socketPath: self.socket(id), configuration: configuration)
    }

    func stop() async {
        await self.server.shutdown()
        try? FileManager.default.removeItem(atPath: self.directory)
    }
}

/// Runs `body` with a fresh emulator, always stopping it.
func withEmulator<T>(
    domains: [UInt16] = [1, 2],
    macPermissive: Bool = true,
    policy: String = "  - {action: allow}",
    extra: String = "",
    domainExtra: [UInt16: String] = [:],
    _ body: (TestEmulator) async throws -> T
) async throws -> T {
    let emulator = try TestEmulator(
        domains: domains,
        macPermissive: macPermissive,
        policy: policy,
        extra: extra,
        domainExtra: domainExtra
    )
    do {
        let result = try await body(emulator)
        await emulator.stop()
        return result
    } catch {
        await emulator.stop()
        throw error
    }
}
