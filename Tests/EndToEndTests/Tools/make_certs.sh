#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
#
# Throwaway certificates for the TLS end-to-end tests, all EC P-256 (fast), made with
# openssl alone (no network, no faketime) into DIR:
#
#   ca.pem, ca.key                    the test CA (every good certificate below chains to it)
#   other-ca.pem, other-ca.key        a second, unrelated CA
#   host-b.pem, host-b.key            server: DNS host-b.example, IP 198.51.100.10
#   localhost.pem, localhost.key      server: DNS localhost, IP 127.0.0.1
#   localhost-2.pem, localhost-2.key  server: the same names, another key and serial (rotation)
#   netvm-a.pem, netvm-a.key          client: CN and DNS netvm-a.example
#   other-a.pem, other-a.key          client: CN and DNS other-a.example
#   expired-client.pem, .key          client: CN netvm-a.example, valid 2020-01-01 to 2020-01-02 only
#   expired-server.pem, .key          server: localhost, 127.0.0.1, host-b.example, 198.51.100.10; expired so
#   other-client.pem, .key            client: CN netvm-a.example, signed by the other CA
#   other-server.pem, .key            server: localhost, 127.0.0.1, host-b.example, 198.51.100.10; the other CA
#   *.sha256                          each certificate's SHA-256 fingerprint as openssl prints it
#
# Each leaf's PEM holds the leaf only (the CA signs it directly: no chain to add).
# Expired certificates come from `openssl ca` with -startdate/-enddate: openssl 3.0's
# `x509 -req` has -days only. Usage: make_certs.sh DIR
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$1
mkdir -p "$dir"
cd "$dir"
work=$(mktemp -d "$PWD/.make-certs.XXXXXX")
trap 'rm -rf "$work"' EXIT
export OPENSSL_CONF=/dev/null

key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    chmod 600 "$1"
}

# A self-signed CA: ca NAME CN
ca() {
    key "$1.key"
    openssl req -x509 -new -key "$1.key" -sha256 -days 3650 -subj "/O=hmx-gateway tests/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$1.pem"
    # openssl ca's database, for the expired certificates.
    mkdir -p "$work/$1"
    : >"$work/$1/index.txt"
    cat >"$work/$1/ca.cnf" <<EOF
[ca]
default_ca = test
[test]
dir = $work/$1
database = \$dir/index.txt
new_certs_dir = \$dir
certificate = $PWD/$1.pem
private_key = $PWD/$1.key
rand_serial = yes
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
[anything]
commonName = supplied
EOF
}

# Extensions of a leaf: extensions server|client SAN...
extensions() {
    local purpose=$1
    shift
    local san
    san=$(
        IFS=,
        echo "$*"
    )
    echo "basicConstraints = critical,CA:FALSE"
    echo "keyUsage = critical,digitalSignature"
    echo "extendedKeyUsage = ${purpose}Auth"
    echo "subjectKeyIdentifier = hash"
    echo "authorityKeyIdentifier = keyid"
    echo "subjectAltName = $san"
}

# A leaf valid for ten years from now: leaf NAME CA server|client CN SAN...
leaf() {
    local name=$1 issuer=$2 purpose=$3 cn=$4
    shift 4
    key "$name.key"
    extensions "$purpose" "$@" >"$work/$name.ext"
    openssl req -new -key "$name.key" -subj "/O=hmx-gateway tests/CN=$cn" -out "$work/$name.csr"
    openssl x509 -req -in "$work/$name.csr" -CA "$issuer.pem" -CAkey "$issuer.key" -CAcreateserial \
        -CAserial "$work/$issuer.srl" -sha256 -days 3650 -extfile "$work/$name.ext" -out "$name.pem" 2>/dev/null
}

# A leaf valid from 2020-01-01 to 2020-01-02 only: expired NAME CA server|client CN SAN...
expired() {
    local name=$1 issuer=$2 purpose=$3 cn=$4
    shift 4
    key "$name.key"
    extensions "$purpose" "$@" >"$work/$name.ext"
    openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$work/$name.csr"
    openssl ca -batch -notext -config "$work/$issuer/ca.cnf" -in "$work/$name.csr" -out "$name.pem" \
        -startdate 20200101000000Z -enddate 20200102000000Z -extfile "$work/$name.ext" 2>/dev/null
}

servers=(DNS:localhost IP:127.0.0.1 DNS:host-b.example IP:198.51.100.10)

ca ca "hmx-gateway test CA"
ca other-ca "unrelated test CA"
leaf host-b ca server host-b.example DNS:host-b.example IP:198.51.100.10
leaf localhost ca server localhost DNS:localhost IP:127.0.0.1
leaf localhost-2 ca server localhost DNS:localhost IP:127.0.0.1
leaf netvm-a ca client netvm-a.example DNS:netvm-a.example
leaf other-a ca client other-a.example DNS:other-a.example
expired expired-client ca client netvm-a.example DNS:netvm-a.example
expired expired-server ca server localhost "${servers[@]}"
leaf other-client other-ca client netvm-a.example DNS:netvm-a.example
leaf other-server other-ca server localhost "${servers[@]}"

for certificate in *.pem; do
    openssl x509 -in "$certificate" -noout -fingerprint -sha256 | cut -d= -f2 >"${certificate%.pem}.sha256"
done

# What was made must be what it claims to be.
for good in host-b localhost localhost-2 netvm-a other-a; do
    openssl verify -CAfile ca.pem "$good.pem" >/dev/null
done
for unrelated in other-client other-server; do
    openssl verify -CAfile other-ca.pem "$unrelated.pem" >/dev/null
    if openssl verify -CAfile ca.pem "$unrelated.pem" >/dev/null 2>&1; then
        echo "$unrelated.pem verifies against ca.pem" >&2
        exit 1
    fi
done
for old in expired-client expired-server; do
    if openssl x509 -in "$old.pem" -noout -checkend 0 >/dev/null; then
        echo "$old.pem is not expired" >&2
        exit 1
    fi
    openssl verify -CAfile ca.pem -no_check_time "$old.pem" >/dev/null
done
if [ "$(cat localhost.sha256)" = "$(cat localhost-2.sha256)" ]; then
    echo "localhost.pem and localhost-2.pem are the same certificate" >&2
    exit 1
fi
echo "certificates in $PWD"
