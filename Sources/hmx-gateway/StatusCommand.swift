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

    @Option(name: .shortAndLong, help: "The gateway's configuration file (its control_socket: is asked).")
    var config: String?

    @Option(help: "The control socket to ask (instead of --config).")
    var socket: String?

    @Flag(help: "Print JSON (for scripts) instead of text.")
    var json = false

    func validate() throws {
        if (self.config == nil) == (self.socket == nil) {
            throw ValidationError("give --config FILE or --socket PATH")
        }
    }

    func run() throws {
        let path: String
        if let socket = self.socket {
            path = socket
        } else {
            let config = loadConfigOrExit(self.config!)
            guard let socket = config.controlSocket else {
                printError(
                    "hmx-gateway: \(self.config!): no control_socket: is configured, so the gateway cannot be asked"
                )
                throw ExitCode(2)
            }
            path = socket
        }
        try printStatus(tool: "hmx-gateway", socket: path, json: self.json) { answer in
            // The first line (text) or the health object (JSON) says it.
            self.json ? answer.contains("\"ready\":true") : !answer.prefix { $0 != "\n" }.contains("NOT READY")
        }
    }
}
