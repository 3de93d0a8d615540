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
tmp=$(mktemp -d)
fresh_key=""  # a key made by this run, removed if the run fails before its certificate exists
cleanup() {
    status=$?
    [ "$status" -ne 0 ] && [ -n "$fresh_key" ] && rm -f "$fresh_key"
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT

quiet() {  # run openssl quietly; on failure show what it said and stop
    "$@" >"$tmp/out" 2>&1 || { cat "$tmp/out" >&2; die "failed: $1 $2"; }
}

need_ca() {
    if [ ! -e "$dir/ca.key" ] || [ ! -e "$dir/ca.pem" ]; then
        die "no CA in $dir (make one: fleet-pki.sh ca $dir)"
    fi
}

new_key() {  # never replaces a key: a device's identity is its key
    [ -e "$1" ] && die "$1 exists; refusing to replace a key"
    fresh_key=$1
    quiet openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
}

not_there() { [ -e "$1" ] && die "$1 exists; refusing to replace it"; return 0; }

check_name() {
    [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ ]] || die "NAME must be a device id: letters, digits, _ and -"
    [[ $1 == server || $1 == ca || $1 == crl ]] && die "NAME '$1' is reserved"
    return 0
}

sign_request() {  # sign_request CSR NAME EXTENSIONS: the CA signs a request into DIR/NAME.pem
    local csr=$1 name=$2 ext=$3
    not_there "$dir/$name.pem"
    printf '%s\n' "$ext" > "$tmp/ext.cnf"
    quiet openssl x509 -req -in "$csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
        -days "$days" -out "$dir/$name.pem" -extfile "$tmp/ext.cnf"
    chmod 644 "$dir/$name.pem"
}

issue() {  # issue NAME SUBJECT EXTENSIONS: key and certificate made here (CA side)
    local name=$1 subject=$2 ext=$3
    need_ca
    not_there "$dir/$name.pem"
    new_key "$dir/$name.key"
    quiet openssl req -new -key "$dir/$name.key" -subj "$subject" -out "$tmp/req.csr"
    sign_request "$tmp/req.csr" "$name" "$ext"
    fresh_key=""
}

ca_config() {  # the minimal `openssl ca` configuration for revocations and CRLs
    [ -e "$dir/index.txt" ] || : > "$dir/index.txt"
    [ -e "$dir/crlnumber" ] || echo 1000 > "$dir/crlnumber"
    printf '[ca]\ndefault_ca = fleet\n[fleet]\ndatabase = %s\ncrlnumber = %s\ncertificate = %s\n' \
        "$dir/index.txt" "$dir/crlnumber" "$dir/ca.pem" > "$tmp/ca.cnf"
    printf 'private_key = %s\ndefault_md = sha256\ndefault_crl_days = %s\n' "$dir/ca.key" "$crl_days" >> "$tmp/ca.cnf"
}

write_crl() {
    ca_config
    quiet openssl ca -config "$tmp/ca.cnf" -gencrl -out "$dir/crl.pem"
    chmod 644 "$dir/crl.pem"
}

case $cmd in
    ca)
        [ -e "$dir/ca.key" ] && die "$dir/ca.key exists; refusing to replace a CA"
        new_key "$dir/ca.key"
        quiet openssl req -x509 -new -key "$dir/ca.key" -days "$((days * 4))" -subj "/CN=${CA_NAME:-edge-fleet-ca}" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -out "$dir/ca.pem"
        chmod 644 "$dir/ca.pem"
        write_crl
        fresh_key=""
        echo "$dir/ca.pem" ;;
    server)
        [ $# -eq 3 ] || die "usage: fleet-pki.sh server DIR HOST"
        host=$3
        [[ $host =~ ^[A-Za-z0-9.:-]+$ ]] || die "HOST must be a host name or an IP address"
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
        quiet openssl req -new -key "$dir/$name.key" -subj "/CN=$name" -out "$dir/$name.csr"
        chmod 644 "$dir/$name.csr"
        fresh_key=""
        echo "$dir/$name.csr" ;;
    sign)
        [ $# -eq 4 ] || die "usage: fleet-pki.sh sign DIR NAME CSR"
        name=$3 csr=$4
        check_name "$name"
        need_ca
        openssl req -in "$csr" -verify -noout >/dev/null 2>&1 || die "$csr is not a valid, self-signed request"
        subject=$(openssl req -in "$csr" -noout -subject -nameopt multiline | sed -n 's/^ *commonName *= *//p')
        [ "$subject" = "$name" ] || die "the request's CN is '$subject', not '$name'"
        sign_request "$csr" "$name" "extendedKeyUsage=clientAuth"
        echo "$dir/$name.pem" ;;
    revoke)
        [ $# -eq 3 ] || die "usage: fleet-pki.sh revoke DIR NAME"
        name=$3
        need_ca
        [ -e "$dir/$name.pem" ] || die "no certificate $dir/$name.pem"
        ca_config
        quiet openssl ca -config "$tmp/ca.cnf" -revoke "$dir/$name.pem"
        write_crl
        echo "$dir/crl.pem" ;;
    crl)
        need_ca
        write_crl
        echo "$dir/crl.pem" ;;
    *) die "unknown command '$cmd' (ca, server, client, csr, sign, revoke, crl)" ;;
esac
