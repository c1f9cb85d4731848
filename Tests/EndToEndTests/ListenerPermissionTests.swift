// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// `mode:` and `group:` on Unix listeners, as systemd's SocketMode= and SocketGroup=.
    @Suite("Unix listener permissions", .enabled(if: getuid() == 0, "connects as another user (root starts it)"))
    struct ListenerPermissions {
        @Test("a listener of mode 0660 and group nogroup lets nobody in; one left to the umask does not")
        func modeAndGroup() async throws {
            let lab = try await GatewayLab()
            let open = "\(lab.directory.path)/open.sock"
            let closed = "\(lab.directory.path)/closed.sock"
            try await lab.startGateways(imports: [
                .init(name: "open", listen: "unix:\(open)", port: 7, extra: ["mode: \"0660\"", "group: nogroup"]),
                .init(name: "closed", listen: "unix:\(closed)", port: 7),
            ])
            var info = stat()
            #expect(lstat(open, &info) == 0 && info.st_mode & 0o777 == 0o660, "\(String(info.st_mode, radix: 8))")
            #expect(info.st_gid == getgrnam("nogroup")?.pointee.gr_gid)
            // The directory must let nobody reach the sockets.
            chmod(lab.directory.path, 0o755)
            let client = """
                import socket, sys
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.connect(sys.argv[1]); s.settimeout(10); s.sendall(b'ping'); print(s.recv(4).decode())
                except OSError as error:
                    print(type(error).__name__)
                """
            let allowed = try await lab.run(.alpha, "runuser", ["-u", "nobody", "--", "python3", "-c", client, open])
            #expect(allowed.output == "ping\n", "\(allowed.output)\n\(lab.gatewayLogs)")
            let denied = try await lab.run(.alpha, "runuser", ["-u", "nobody", "--", "python3", "-c", client, closed])
            #expect(denied.output == "PermissionError\n", "\(denied.output)")
        }
    }
}
