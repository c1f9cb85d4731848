// SPDX-License-Identifier: Apache-2.0
import ArgumentParser
import HMXCommandLine
import HMXGateway

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Ask a running gateway what it is doing: peers and their rings, each mapping's connections, bytes and outcomes, the window pool.",
        discussion: """
            The gateway answers on its control socket (control_socket: in its configuration, \
            mode 0600: run this as root or as the gateway's user). Exit status: 0 ready, 1 \
            answered but not ready, 2 no answer.
            """
    )

    @OptionGroup var options: StatusOptions

    func run() throws {
        let path = try self.options.socketPath(tool: "hmx-gateway") { loadConfigOrExit($0).controlSocket }
        let json = self.options.json
        try printStatus(tool: "hmx-gateway", socket: path, json: json) { answer in
            // The first line (text) or the health object (JSON) says it.
            json ? answer.contains("\"ready\":true") : !answer.prefix { $0 != "\n" }.contains("NOT READY")
        }
    }
}
