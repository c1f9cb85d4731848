// SPDX-License-Identifier: Apache-2.0
import ArgumentParser
import HMXCommandLine
import HMXCore
import HMXEmulator
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

struct Listen: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Register a ring and print every message with its authenticated source."
    )

    @OptionGroup var link: LinkOptions

    @Option(name: .shortAndLong, help: "The Argo port of the ring.")
    var port: UInt32

    @Option(name: .long, help: "Accept only this domain (partner ring), or 'any' for a wildcard ring.")
    var from: PartnerArgument = PartnerArgument(argument: "any")!

    @Option(name: .long, help: "Ring length in bytes (multiple of 16).")
    var ringSize: UInt32 = ArgoABI.ringLength(fillingPages: 32)

    @Flag(name: .long, help: "Write payloads only, byte for byte, to standard output (for scripts).")
    var raw = false

    @Flag(name: .long, help: "Print nothing per message; count messages and bytes (for benchmarks).")
    var discard = false

    @Option(name: .long, help: "Exit after this many messages.")
    var count: Int?

    @Option(name: .long, help: "Exit after this many payload bytes (with --raw or --discard).")
    var bytes: Int?

    func run() async throws {
        let link = try await self.link.attach()
        var ring: HMXRing?
        var announcedWait = false
        while ring == nil {
            do {
                ring = try await link.registerRing(
                    port: self.port,
                    partner: self.from.domain,
                    length: self.ringSize,
                    failIfExists: true
                ).get()
            } catch let error as HMXError where error.errno == .ESRCH && self.from.domain != .any {
                // A partner ring needs the partner to exist: wait for it to start.
                if !announcedWait {
                    printError("hmx-cat: waiting for domain \(self.from.domain) to start")
                    announcedWait = true
                }
                try await Task.sleep(nanoseconds: 200_000_000)
            } catch {
                throw ExitStatus.fail(error, doing: "cannot register ring \(link.localDomain):\(self.port)")
            }
        }
        guard let ring else { return }
        if !self.raw && !self.discard {
            printError(
                "hmx-cat: domain \(link.localDomain) listening on port \(self.port) (from \(self.from.domain), ring \(self.ringSize) bytes)"
            )
        }
        var messages = 0
        var payloadBytes = 0
        var firstAt: Double?
        var events = link.events().makeAsyncIterator()
        var output = [UInt8]()
        output.reserveCapacity(1 << 16)
        receiving: while true {
            // Drain before waiting: messages may already be there.
            var drained = 0
            do {
                drained = try ring.receive { message in
                    if firstAt == nil { firstAt = monotonicSeconds() }
                    messages += 1
                    payloadBytes += message.payloadLength
                    if self.discard { return }
                    if self.raw {
                        output.append(contentsOf: message.first)
                        output.append(contentsOf: message.second)
                    } else {
                        let text = Self.printable(message.payloadBytes())
                        output.append(
                            contentsOf:
                                "from \(message.source) type 0x\(String(message.header.messageType, radix: 16)) \(message.payloadLength) bytes: \(text)\n"
                                .utf8
                        )
                    }
                    if output.count >= 1 << 16 { Self.flush(&output) }
                }
            } catch {
                printError("hmx-cat: ring content was corrupt and has been flushed: \(error)")
            }
            Self.flush(&output)
            if drained > 0 {
                // Wake senders that were waiting for space.
                _ = try? await link.notify([]).get()
            }
            if let count = self.count, messages >= count { break receiving }
            if let limit = self.bytes, payloadBytes >= limit { break receiving }
            if drained > 0 { continue }
            guard await events.next() != nil else {
                printError("hmx-cat: the link to the hypervisor was lost")
                throw ExitCode(ExitStatus.linkLost)
            }
        }
        if self.discard, let firstAt {
            let seconds = max(monotonicSeconds() - firstAt, 1e-9)
            print(
                "received \(messages) messages, \(payloadBytes) bytes in \(format3(seconds)) s: \(format3(Double(messages) / seconds)) msg/s, \(format3(Double(payloadBytes) / seconds / 1e6)) MB/s"
            )
        }
        _ = try? await link.unregisterRing(ring).get()
        _ = try? await link.close().get()
    }

    static func flush(_ output: inout [UInt8]) {
        guard !output.isEmpty else { return }
        _ = output.withUnsafeBytes { writeAll(1, $0) }
        output.removeAll(keepingCapacity: true)
    }

    /// Text with non-printable bytes escaped, for the human-readable mode.
    static func printable(_ bytes: [UInt8]) -> String {
        var text = ""
        for byte in bytes {
            switch byte {
            case 0x20...0x7E where byte != UInt8(ascii: "\\"): text.unicodeScalars.append(Unicode.Scalar(byte))
            case UInt8(ascii: "\\"): text += "\\\\"
            case 0x0A: text += "\\n"
            case 0x09: text += "\\t"
            default: text += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
            }
        }
        return text
    }
}

/// Formats with three decimals, without Foundation.
func format3(_ value: Double) -> String {
    let scaled = (value * 1000).rounded()
    let whole = Int(scaled / 1000)
    let fraction = Int(abs(scaled).truncatingRemainder(dividingBy: 1000))
    let padded = String(fraction)
    return "\(whole).\(String(repeating: "0", count: 3 - padded.count))\(padded)"
}
