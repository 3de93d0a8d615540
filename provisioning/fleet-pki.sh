#!/usr/bin/env bash
# Certificates for an edge-agent fleet (openssl): one CA, one broker certificate,
# one client certificate per device or operator. A client's CN is its identity:
# the broker (use_identity_as_username, use_username_as_clientid) makes it the
# username that the ACL confines and the client id, so a device's CN must be its
# device id.
#
#   fleet-pki.sh ca DIR                  CA key and certificate (DIR/ca.key, DIR/ca.pem) and an empty CRL
#   fleet-pki.sh server DIR HOST         broker certificate for a host name or IP address
#   fleet-pki.sh client DIR NAME         client key and certificate DIR/NAME.key + DIR/NAME.pem
#   fleet-pki.sh csr DIR NAME            on the device: its key DIR/NAME.key and a request DIR/NAME.csr;
#                                        only the request travels, the key never leaves the device
#   fleet-pki.sh sign DIR NAME CSR       at the CA: DIR/NAME.pem from a device's request (CN must be NAME)
#   fleet-pki.sh revoke DIR NAME         revoke DIR/NAME.pem and rewrite DIR/crl.pem (then restart or
#                                        SIGHUP the broker: it reads the CRL at start)
#   fleet-pki.sh crl DIR                 rewrite DIR/crl.pem (a CRL expires after CRL_DAYS, default 365:
#                                        renew it before, or the broker refuses every client)
#
# Keys are ECDSA P-256, written mode 600, and never replaced: a command that would overwrite a key or
# certificate refuses. DAYS sets the validity (default 825).
set -euo pipefail

die() { echo "fleet-pki: $*" >&2; exit 2; }
[ $# -ge 2 ] || die "usage: fleet-pki.sh ca DIR | server DIR HOST | client DIR NAME | csr DIR NAME | sign DIR NAME CSR | revoke DIR NAME | crl DIR"
command -v openssl >/dev/null || die "openssl is not installed"
cmd=$1 dir=$2
days=${DAYS:-825}
crl_days=${CRL_DAYS:-365}
mkdir -p "$dir"
umask 077

new_key() {  # never replaces a key: a device's identity is its key
    [ -e "$1" ] && die "$1 exists; refusing to replace a key"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

not_there() { [ -e "$1" ] && die "$1 exists; refusing to replace it"; return 0; }

check_name() {
    [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ ]] || die "NAME must be a device id: letters, digits, _ and -"
    [[ $1 == server || $1 == ca || $1 == crl ]] && die "NAME '$1' is reserved"
    return 0
}

sign_request() {  # sign_request CSR NAME EXTENSIONS: the CA signs a request into DIR/NAME.pem
    local csr=$1 name=$2 ext=$3 tmp
    not_there "$dir/$name.pem"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    printf '%s\n' "$ext" > "$tmp/ext.cnf"
    openssl x509 -req -in "$csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
        -days "$days" -out "$dir/$name.pem" -extfile "$tmp/ext.cnf" 2>/dev/null
    chmod 644 "$dir/$name.pem"
}

issue() {  # issue NAME SUBJECT EXTENSIONS: key and certificate made here (CA side)
    local name=$1 subject=$2 ext=$3 tmp
    not_there "$dir/$name.pem"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    new_key "$dir/$name.key"
    openssl req -new -key "$dir/$name.key" -subj "$subject" -out "$tmp/req.csr"
    sign_request "$tmp/req.csr" "$name" "$ext"
}

ca_config() {  # the minimal `openssl ca` configuration for revocations and CRLs
    [ -e "$dir/index.txt" ] || : > "$dir/index.txt"
    [ -e "$dir/crlnumber" ] || echo 1000 > "$dir/crlnumber"
    printf '[ca]\ndefault_ca = fleet\n[fleet]\ndatabase = %s\ncrlnumber = %s\ncertificate = %s\n' \
        "$dir/index.txt" "$dir/crlnumber" "$dir/ca.pem" > "$1"
    printf 'private_key = %s\ndefault_md = sha256\ndefault_crl_days = %s\n' "$dir/ca.key" "$crl_days" >> "$1"
}

write_crl() {
    local tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    ca_config "$tmp/ca.cnf"
    openssl ca -config "$tmp/ca.cnf" -gencrl -out "$dir/crl.pem" 2>/dev/null
    chmod 644 "$dir/crl.pem"
}

case $cmd in
    ca)
        [ -e "$dir/ca.key" ] && die "$dir/ca.key exists; refusing to replace a CA"
        new_key "$dir/ca.key"
        openssl req -x509 -new -key "$dir/ca.key" -days "$((days * 4))" -subj "/CN=${CA_NAME:-edge-fleet-ca}" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -out "$dir/ca.pem"
        chmod 644 "$dir/ca.pem"
        write_crl
        echo "$dir/ca.pem" ;;
    server)
        [ $# -eq 3 ] || die "usage: fleet-pki.sh server DIR HOST"
        host=$3
        if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then san="IP:$host"; else san="DNS:$host"; fi
        issue server "/CN=$host" "subjectAltName=$san
extendedKeyUsage=serverAuth"
        echo "$dir/server.pem" ;;
    client)
        [ $# -eq 3 ] || die "usage: fleet-pki.sh client DIR NAME"
        name=$3
        check_name "$name"
        issue "$name" "/CN=$name" "extendedKeyUsage=clientAuth"
        echo "$dir/$name.pem" ;;
    csr)
        [ $# -eq 3 ] || die "usage: fleet-pki.sh csr DIR NAME"
        name=$3
        check_name "$name"
        not_there "$dir/$name.csr"
        new_key "$dir/$name.key"
        openssl req -new -key "$dir/$name.key" -subj "/CN=$name" -out "$dir/$name.csr"
        chmod 644 "$dir/$name.csr"
        echo "$dir/$name.csr" ;;
    sign)
        [ $# -eq 4 ] || die "usage: fleet-pki.sh sign DIR NAME CSR"
        name=$3 csr=$4
        check_name "$name"
        openssl req -in "$csr" -verify -noout 2>/dev/null || die "$csr is not a valid, self-signed request"
        subject=$(openssl req -in "$csr" -noout -subject -nameopt multiline | sed -n 's/^ *commonName *= *//p')
        [ "$subject" = "$name" ] || die "the request's CN is '$subject', not '$name'"
        sign_request "$csr" "$name" "extendedKeyUsage=clientAuth"
        echo "$dir/$name.pem" ;;
    revoke)
        [ $# -eq 3 ] || die "usage: fleet-pki.sh revoke DIR NAME"
        name=$3
        [ -e "$dir/$name.pem" ] || die "no certificate $dir/$name.pem"
        tmp=$(mktemp -d)
        ca_config "$tmp/ca.cnf"
        openssl ca -config "$tmp/ca.cnf" -revoke "$dir/$name.pem" 2>/dev/null || { rm -rf "$tmp"; die "revocation failed"; }
        rm -rf "$tmp"
        write_crl
        echo "$dir/crl.pem" ;;
    crl)
        write_crl
        echo "$dir/crl.pem" ;;
    *) die "unknown command '$cmd' (ca, server, client, csr, sign, revoke, crl)" ;;
esac
