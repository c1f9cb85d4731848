// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXControl
import NIOCore
import NIOPosix
import Testing

/// The control socket's file: mode 0600 from the moment it exists at its path, a stale
/// socket replaced, any other file refused, no staging left behind.
@Suite("Control socket file")
struct ControlSocketTests {
    func directory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent(
            "hmx-control-\(UUID().uuidString.prefix(8))"
        )
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    func bind(_ path: String) async throws -> any Channel {
        try await ControlSocket.bind(path: path, group: MultiThreadedEventLoopGroup.singleton) { request in
            MultiThreadedEventLoopGroup.singleton.next().makeSucceededFuture("answer to \(request)\n")
        }.get()
    }

    @Test("bound with mode 0600 and renamed into place; a stale socket is replaced; it answers")
    func modeAndStaleSocket() async throws {
        let directory = try self.directory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("gateway.control").path
        let first = try await self.bind(path)
        var info = stat()
        #expect(lstat(path, &info) == 0)
        #expect(info.st_mode & S_IFMT == S_IFSOCK)
        #expect(info.st_mode & 0o777 == 0o600)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["gateway.control"])
        try await first.close()
        // The closed listener left its socket file: the next daemon replaces it.
        #expect(lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFSOCK)
        let second = try await self.bind(path)
        #expect(try ControlSocket.ask(.status(json: false), path: path).hasPrefix("answer to"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["gateway.control"])
        try await second.close()
    }

    @Test("a file that is not a socket is refused and left alone")
    func notASocket() async throws {
        let directory = try self.directory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("gateway.control").path
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: path))
        await #expect(throws: ControlSocketError.self) { _ = try await self.bind(path) }
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "keep me")
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["gateway.control"])
    }
}
