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
        .executable(name: "hmx-emulator", targets: ["hmx-emulator"]),
        .executable(name: "hmx-cat", targets: ["hmx-cat"]),
        .library(name: "HMXXen", targets: ["HMXXen"]),
        .executable(name: "hmx-xen-probe", targets: ["hmx-xen-probe"]),
        .executable(name: "hmx-conformance", targets: ["hmx-conformance"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
    ],
    targets: [
        // MARK: - Targets
        .target(name: "CHMXShims"),
        .target(
            name: "HMXCore",
            dependencies: ["CHMXShims", .product(name: "NIOCore", package: "swift-nio")],
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
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
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
            dependencies: ["HMXCore", "CXenABI"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HMXEmulatorTests",
            dependencies: [
                "HMXCore", "HMXEmulator", "HMXConformance", "HMXConfig", "hmx-emulator", "hmx-cat",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
