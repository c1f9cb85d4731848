// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

/// hmx-emulator + two hmx-gateway processes + real, unmodified programs. The suites
/// run one at a time: each starts several processes on a small machine.
@Suite("hmx-gateway end to end", .serialized)
struct GatewayEndToEndTests {}

/// Parses the tool's one-line JSON results.
func jsonObject(_ text: String) -> [String: Any]? {
    guard let line = text.split(separator: "\n").last(where: { $0.hasPrefix("{") }) else { return nil }
    return (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
}

/// The tool's `sink` throughput in MB/s, or `nil` if it failed.
func sinkRate(_ result: (status: Int32?, output: String)) -> Double? {
    guard result.status == 0 else { return nil }
    return (jsonObject(result.output)?["mbps"] as? NSNumber)?.doubleValue
}
