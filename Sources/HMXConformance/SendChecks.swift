// SPDX-License-Identifier: Apache-2.0
import HMXCore

/// sendv (ARGO.md §1.5 and §2).
enum SendChecks {
    static let all: [ConformanceSuite.Check] = [
        .init("sendv: a message arrives with the stamped source domain, the given port and type") { context in
            let raw = context.primary
            let port = freshPort()
            let (result, memory) = try await raw.register(port: port, partner: raw.domain.rawValue, length: 4032)
            try expectSuccess(result, "register")
            let sent = try await raw.sendv(
                source: ArgoAddr(port: 77, domain: ArgoABI.domidAny),
                destination: raw.self_(port),
                payloads: [Array("hello argo".utf8)],
                type: 0x1234_5678
            )
            try expectSuccess(sent, "sendv", equals: 10)
            var ring = RawRing(memory, length: 4032)
            guard let message = try ring.next() else { throw ConformanceSuite.CheckFailure("no message in the ring") }
            try require(
                message.header.length == 26,
                "header length \(message.header.length), expected 26 (payload + 16)"
            )
            try require(
                message.header.source.domain == raw.domain.rawValue,
                "source domain \(message.header.source.domain)"
            )
            try require(message.header.source.port == 77, "source port \(message.header.source.port)")
            try require(message.header.messageType == 0x1234_5678, "message type")
            try require(message.payload == Array("hello argo".utf8), "payload differs")
            try require(try ring.next() == nil, "more than one message")
        },
        .init("sendv: iovs are gathered in order, empty ones skipped; niov 0 sends a header only") { context in
            let raw = context.primary
            let port = freshPort()
            let (result, memory) = try await raw.register(port: port, partner: raw.domain.rawValue, length: 4032)
            try expectSuccess(result, "register")
            try expectSuccess(
                try await raw.sendv(
                    source: raw.self_(),
                    destination: raw.self_(port),
                    payloads: [[1, 2, 3], [], [4, 5]]
                ),
                "three iovs",
                equals: 5
            )
            try expectSuccess(
                try await raw.sendv(source: raw.self_(), destination: raw.self_(port), payloads: []),
                "niov 0"
            )
            var ring = RawRing(memory, length: 4032)
            try require(try ring.next()?.payload == [1, 2, 3, 4, 5], "gathered payload differs")
            let empty = try ring.next()
            try require(empty?.header.length == 16 && empty?.payload == [], "niov 0 should give a 16-byte message")
        },
        .init("sendv: a forged source domain is EPERM") { context in
            let raw = context.primary
            let port = freshPort()
            try expectSuccess(
                try await raw.register(port: port, partner: raw.domain.rawValue, length: 4032).result,
                "register"
            )
            let forged = ArgoAddr(port: 0, domain: context.world.absentDomain.rawValue)
            try expect(
                try await raw.sendv(source: forged, destination: raw.self_(port), payloads: [[1]]),
                .EPERM,
                "forged source"
            )
        },
        .init("sendv: a destination domain that does not exist is ESRCH, DOMID_SELF too") { context in
            let raw = context.primary
            let absent = ArgoAddr(port: 1, domain: context.world.absentDomain.rawValue)
            try expect(
                try await raw.sendv(source: raw.self_(), destination: absent, payloads: [[1]]),
                .ESRCH,
                "absent domain"
            )
            let selfID = ArgoAddr(port: 1, domain: DomainID.selfDomain.rawValue)
            try expect(
                try await raw.sendv(source: raw.self_(), destination: selfID, payloads: [[1]]),
                .ESRCH,
                "DOMID_SELF"
            )
        },
        .init("sendv: no ring at the destination port is ECONNREFUSED") { context in
            let raw = context.primary
            try expect(
                try await raw.sendv(source: raw.self_(), destination: raw.self_(freshPort()), payloads: [[1]]),
                .ECONNREFUSED,
                "no ring"
            )
        },
        .init("sendv: bad padding, niov above 8 and oversized iovs are EINVAL") { context in
            let raw = context.primary
            let port = freshPort()
            try expectSuccess(
                try await raw.register(port: port, partner: raw.domain.rawValue, length: 4032).result,
                "register"
            )
            var source = raw.self_()
            source.pad = 1
            try expect(
                try await raw.sendv(source: source, destination: raw.self_(port), payloads: [[1]]),
                .EINVAL,
                "source pad"
            )
            var destination = raw.self_(port)
            destination.pad = 1
            try expect(
                try await raw.sendv(source: raw.self_(), destination: destination, payloads: [[1]]),
                .EINVAL,
                "destination pad"
            )
            try expect(
                try await raw.sendv(
                    source: raw.self_(),
                    destination: raw.self_(port),
                    payloads: Array(repeating: [1], count: 9)
                ),
                .EINVAL,
                "niov 9"
            )
            try expect(
                try await raw.sendv(source: raw.self_(), destination: raw.self_(port), payloads: [[1]]) {
                    $0[0].pad = 1
                },
                .EINVAL,
                "iov pad"
            )
            try expect(
                try await raw.sendv(source: raw.self_(), destination: raw.self_(port), payloads: [[1]]) {
                    $0[0].length = ArgoABI.maximumMessageSize + 1
                },
                .EINVAL,
                "one iov above the message limit"
            )
        },
        .init("sendv: iovs summing above 16777184 bytes are EMSGSIZE") { context in
            let raw = context.primary
            let port = freshPort()
            try expectSuccess(
                try await raw.register(port: port, partner: raw.domain.rawValue, length: 4032).result,
                "register"
            )
            try expect(
                try await raw.sendv(source: raw.self_(), destination: raw.self_(port), payloads: [[1], [2]]) { iovs in
                    iovs[0].length = 9_000_000
                    iovs[1].length = 9_000_000
                },
                .EMSGSIZE,
                "two iovs of 9 MB"
            )
        },
        .init("sendv: a message that can never fit the ring is EMSGSIZE; len - 32 fits") { context in
            let raw = context.primary
            let port = freshPort()
            try expectSuccess(
                try await raw.register(port: port, partner: raw.domain.rawValue, length: 256).result,
                "register"
            )
            try expect(
                try await raw.sendv(
                    source: raw.self_(),
                    destination: raw.self_(port),
                    payloads: [Array(repeating: 7, count: 225)]
                ),
                .EMSGSIZE,
                "225 bytes into a 256-byte ring"
            )
            try expectSuccess(
                try await raw.sendv(
                    source: raw.self_(),
                    destination: raw.self_(port),
                    payloads: [Array(repeating: 7, count: 224)]
                ),
                "224 bytes into a 256-byte ring",
                equals: 224
            )
        },
        .init("sendv: a full ring is EAGAIN; only the receiver's notify wakes the sender") { context in
            let raw = context.primary
            let port = freshPort()
            let (result, memory) = try await raw.register(port: port, partner: raw.domain.rawValue, length: 256)
            try expectSuccess(result, "register")
            try expectSuccess(
                try await raw.sendv(
                    source: raw.self_(),
                    destination: raw.self_(port),
                    payloads: [Array(repeating: 1, count: 224)]
                ),
                "fill",
                equals: 224
            )
            // Let the data-arrival event of the first message pass.
            _ = await raw.events.quiet(beyond: -1, for: 100)
            try expect(
                try await raw.sendv(source: raw.self_(), destination: raw.self_(port), payloads: [[2]]),
                .EAGAIN,
                "full ring"
            )
            let mark = raw.events.count
            try require(await raw.events.quiet(beyond: mark), "woken before the receiver made room")
            var ring = RawRing(memory, length: 256)
            try require(try ring.next()?.payload.count == 224, "the first message")
            try expectSuccess(try await raw.call(ArgoABI.Op.notify), "notify after draining")
            try require(await raw.events.wait(beyond: mark), "no wake-up after the receiver drained and notified")
            try expectSuccess(
                try await raw.sendv(source: raw.self_(), destination: raw.self_(port), payloads: [[2]]),
                "retry",
                equals: 1
            )
            try require(try ring.next()?.payload == [2], "the retried message")
        },
        .init("sendv: an unreadable iov is EFAULT and nothing becomes visible") { context in
            let raw = context.primary
            let port = freshPort()
            let (result, memory) = try await raw.register(port: port, partner: raw.domain.rawValue, length: 4032)
            try expectSuccess(result, "register")
            let bad = raw.link.invalidGuestAddress
            try expect(
                try await raw.sendv(source: raw.self_(), destination: raw.self_(port), payloads: [[1, 2], [3]]) {
                    $0[1].address = bad
                },
                .EFAULT,
                "second iov unreadable"
            )
            var ring = RawRing(memory, length: 4032)
            try require(try ring.next() == nil, "a partial message became visible")
            try expectSuccess(
                try await raw.sendv(source: raw.self_(), destination: raw.self_(port), payloads: [[9]]),
                "good send",
                equals: 1
            )
            try require(try ring.next()?.payload == [9], "the good message")
        },
        .init("sendv: messages stay intact across wrap-around at every slot offset") { context in
            let raw = context.primary
            let port = freshPort()
            let length: UInt32 = 512
            let (result, memory) = try await raw.register(port: port, partner: raw.domain.rawValue, length: length)
            try expectSuccess(result, "register")
            var ring = RawRing(memory, length: length)
            var generator = SplitMix(seed: 42)
            for round in 0..<200 {
                let size = Int(generator.next() % 300)
                let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ round) }
                try expectSuccess(
                    try await raw.sendv(source: raw.self_(), destination: raw.self_(port), payloads: [payload]),
                    "round \(round)",
                    equals: Int64(size)
                )
                guard let message = try ring.next() else {
                    throw ConformanceSuite.CheckFailure("round \(round): no message")
                }
                try require(message.payload == payload, "round \(round): payload of \(size) bytes differs")
            }
        },
    ]
}

/// A small deterministic generator (SplitMix64), so checks are reproducible.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
