// swift-tools-version:6.1
// SPDX-License-Identifier: Apache-2.0
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "hmx-gateway",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "HMXCore", targets: ["HMXCore"]),
        .library(name: "HMXEmulator", targets: ["HMXEmulator"]),
        .library(name: "HMXConfig", targets: ["HMXConfig"]),
        .library(name: "HMXStream", targets: ["HMXStream"]),
        .executable(name: "hmx-emulator", targets: ["hmx-emulator"]),
        .executable(name: "hmx-cat", targets: ["hmx-cat"]),
        .executable(name: "hmx-gateway", targets: ["hmx-gateway"]),
        .library(name: "HMXXen", targets: ["HMXXen"]),
        .executable(name: "hmx-xen-probe", targets: ["hmx-xen-probe"]),
        .library(name: "HMXProxyProtocol", targets: ["HMXProxyProtocol"]),
        // For the fuzz targets (Fuzz/), which see only products: the gateway's
        // configuration loader.
        .library(name: "HMXGateway", targets: ["HMXGateway"]),
        // ... and the conformance agent's requests.
        .library(name: "HMXConformance", targets: ["HMXConformance"]),
        .executable(name: "hmx-conformance", targets: ["hmx-conformance"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
    ],
    targets: [
        // MARK: - Targets
        .target(name: "CHMXShims"),
        .target(
            name: "HMXCore",
            dependencies: ["CHMXShims", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        // A daemon's local control socket (`status`), for the gateway and the emulator.
        .target(
            name: "HMXControl",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "HMXConfig",
            dependencies: [.product(name: "Yams", package: "Yams")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "HMXEmulator",
            dependencies: [
                "HMXCore",
                "HMXConfig",
                "HMXControl",
                "CHMXShims",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "HMXCommandLine",
            dependencies: [
                "HMXControl",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "HMXStream",
            dependencies: ["HMXCore", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "HMXProxyProtocol",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "HMXGateway",
            dependencies: [
                "CHMXShims", "HMXCore", "HMXStream", "HMXConfig", "HMXControl", "HMXEmulator", "HMXXen",
                "HMXProxyProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // TLS for `tls://` endpoints (swift-nio-ssl, BoringSSL built in): kept out of
        // HMXGateway, which the fuzz targets build, behind its GatewayTLS protocol.
        .target(
            name: "HMXTLS",
            dependencies: [
                "HMXGateway",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "HMXConformance",
            dependencies: ["HMXCore", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "hmx-emulator",
            dependencies: [
                "HMXCore",
                "HMXConfig",
                "HMXControl",
                "HMXEmulator",
                "HMXCommandLine",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "hmx-gateway",
            dependencies: [
                "HMXCore", "HMXConfig", "HMXControl", "HMXGateway", "HMXTLS", "HMXCommandLine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "hmx-cat",
            dependencies: [
                "HMXCore",
                "HMXCommandLine",
                "HMXEmulator",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The Xen backend. CXenArgo links Xen's stable user-space libraries (libxen-dev):
        // libxencall (hypercalls, hypercall-safe buffers), libxenevtchn (VIRQ_ARGO),
        // libxenforeignmemory (MMAPBATCH_V2 mapping of ring frames), libxenstore (domid).
        .target(
            name: "CXenArgo",
            linkerSettings: [
                .linkedLibrary("xencall"),
                .linkedLibrary("xenevtchn"),
                .linkedLibrary("xenforeignmemory"),
                .linkedLibrary("xenstore"),
                .linkedLibrary("xentoollog"),
            ]
        ),
        .target(
            name: "HMXXen",
            dependencies: [
                "HMXCore",
                "CXenArgo",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "hmx-xen-probe",
            dependencies: [
                "HMXCore",
                "HMXXen",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "hmx-conformance",
            dependencies: [
                "HMXCore",
                "HMXConformance",
                "HMXEmulator",
                "HMXXen",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: - Tests
        .target(name: "CXenABI", path: "Tests/CXenABI"),
        .testTarget(
            name: "HMXCoreTests",
            dependencies: ["HMXCore", "CXenABI", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        // Child processes, temporary folders and polling for the real-process tests.
        .target(name: "HMXProcessTestSupport", path: "Tests/HMXProcessTestSupport", swiftSettings: swiftSettings),
        // An in-process hypervisor and HMXLink on one EmbeddedEventLoop: deterministic
        // tests of link users, with the emulator's Argo semantics and no processes.
        .target(
            name: "HMXTestSupport",
            dependencies: [
                "HMXCore", "HMXEmulator",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/HMXTestSupport",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HMXTestSupportTests",
            dependencies: [
                "HMXTestSupport", "HMXCore", "HMXEmulator",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HMXStreamTests",
            dependencies: ["HMXStream", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        // The stream protocol under a seeded simulation: gateways' drivers and the
        // in-process hypervisor in one process, every interleaving chosen by a seed.
        .testTarget(
            name: "HMXSimulationTests",
            dependencies: [
                "HMXStream", "HMXTestSupport", "HMXCore", "HMXEmulator",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // The gateway's socket glue on EmbeddedChannels, over the in-process hypervisor.
        .testTarget(
            name: "HMXGatewayTests",
            dependencies: [
                "HMXGateway", "HMXStream", "HMXTestSupport", "HMXCore", "HMXControl",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HMXGatewayConfigTests",
            dependencies: ["HMXGateway", "HMXConfig", "HMXCore", "HMXEmulator", "HMXStream"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HMXEmulatorTests",
            dependencies: [
                "HMXCore", "HMXEmulator", "HMXConformance", "HMXConfig", "HMXProcessTestSupport", "hmx-emulator",
                "hmx-cat", "CHMXShims",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HMXTLSTests",
            dependencies: ["HMXTLS", "HMXGateway", "HMXProcessTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HMXProxyProtocolTests",
            dependencies: [
                "HMXProxyProtocol", "HMXProcessTestSupport", .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // End to end: hmx-emulator, two hmx-gateway processes and real programs from Debian
        // (redis, iperf3, socat, python3), each domain in its own network namespace when root.
        .testTarget(
            name: "EndToEndTests",
            dependencies: [
                "HMXProcessTestSupport", "hmx-emulator", "hmx-gateway", "HMXCore", "HMXEmulator", "HMXStream",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            exclude: ["Tools"],
            swiftSettings: swiftSettings
        ),
    ]
)
