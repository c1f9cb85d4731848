// SPDX-License-Identifier: Apache-2.0
import FuzzSupport
import HMXConformance

/// Fuzzes the conformance agent's request parser (`hmx-conformance agent` reads one
/// line per request from xenstore): it must never crash, keep its payload and ring
/// length bounds, and every request it accepts must print to a line that parses back
/// to the same request.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAgentRequest(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let line = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    guard let request = AgentRequest(line: line) else { return 0 }
    switch request {
    case .sendv(_, _, let payloads):
        precondition(payloads.reduce(0) { $0 + $1.count } <= AgentRequest.maximumPayloadBytes, "payload bound")
    case .register(_, _, let length):
        precondition(length <= AgentRequest.maximumRingLength, "ring length bound")
    default:
        break
    }
    precondition(AgentRequest(line: request.line) == request, "an accepted request does not print back to itself")
    return 0
}

@_cdecl("FuzzAgentRequest_main")
func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzAgentRequest)
}
