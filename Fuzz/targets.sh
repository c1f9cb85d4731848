# SPDX-License-Identifier: Apache-2.0
# The fuzz targets and what each is run with; sourced by scripts/test and
# scripts/fuzz-long (from the repository's root).

FUZZ_TARGETS=(FuzzRingReader FuzzLinkWire FuzzStreamFrame FuzzProxyProtocol FuzzConfig FuzzAgentRequest)

# Builds the targets (release, libFuzzer and AddressSanitizer) into .build-fuzz.
fuzz_build() {
    swift build --package-path Fuzz --scratch-path .build-fuzz -c release \
        -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library 2>&1 | grep -v "__asan_extra_spill_area" || true
}

# Options for a target beyond the common ones: a dictionary.
fuzz_options() {
    case "$1" in
    FuzzConfig) echo "-dict=Fuzz/FuzzConfig.dict" ;;
    esac
}

# Read-only seed folders for a target (its corpus folder comes first and grows).
fuzz_seeds() {
    case "$1" in
    FuzzConfig) echo "Configs Fuzz/Regressions/FuzzConfig" ;;
    FuzzStreamFrame) echo "Fuzz/Seeds/FuzzStreamFrame" ;;
    FuzzAgentRequest) echo "Fuzz/Seeds/FuzzAgentRequest" ;;
    esac
}
