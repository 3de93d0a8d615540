#!/usr/bin/env bash
# Certificates for an edge-agent fleet (openssl): one CA, one broker certificate,
# one client certificate per device or operator. A client's CN is its identity:
# the broker (use_identity_as_username) makes it the username that the ACL
# confines, so a device's CN must be its device id.
#
#   fleet-pki.sh ca DIR                  CA key and certificate (DIR/ca.key, DIR/ca.pem)
#   fleet-pki.sh server DIR HOST         broker certificate for a host name or IP address
#   fleet-pki.sh client DIR NAME         client certificate DIR/NAME.pem + DIR/NAME.key
#
# Keys are ECDSA P-256, written mode 600. DAYS sets the validity (default 825).
set -euo pipefail

die() { echo "fleet-pki: $*" >&2; exit 2; }
[ $# -ge 2 ] || die "usage: fleet-pki.sh ca DIR | server DIR HOST | client DIR NAME"
command -v openssl >/dev/null || die "openssl is not installed"
cmd=$1 dir=$2
days=${DAYS:-825}
mkdir -p "$dir"
umask 077

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

sign() {  # sign NAME SUBJECT EXTENSIONS
    local name=$1 subject=$2 ext=$3 tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    new_key "$dir/$name.key"
    openssl req -new -key "$dir/$name.key" -subj "$subject" -out "$tmp/req.csr"
    printf '%s\n' "$ext" > "$tmp/ext.cnf"
    openssl x509 -req -in "$tmp/req.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
        -days "$days" -out "$dir/$name.pem" -extfile "$tmp/ext.cnf" 2>/dev/null
    chmod 644 "$dir/$name.pem"
}

case $cmd in
    ca)
        [ -e "$dir/ca.key" ] && die "$dir/ca.key exists; refusing to replace a CA"
        new_key "$dir/ca.key"
        openssl req -x509 -new -key "$dir/ca.key" -days "$((days * 4))" -subj "/CN=${CA_NAME:-edge-fleet-ca}" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -out "$dir/ca.pem"
        chmod 644 "$dir/ca.pem"
        echo "$dir/ca.pem" ;;
    server)
        [ $# -eq 3 ] || die "usage: fleet-pki.sh server DIR HOST"
        host=$3
        if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then san="IP:$host"; else san="DNS:$host"; fi
        sign server "/CN=$host" "subjectAltName=$san
extendedKeyUsage=serverAuth"
        echo "$dir/server.pem" ;;
    client)
        [ $# -eq 3 ] || die "usage: fleet-pki.sh client DIR NAME"
        name=$3
        [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ ]] || die "NAME must be a device id: letters, digits, _ and -"
        [[ $name == server || $name == ca ]] && die "NAME '$name' is reserved"
        sign "$name" "/CN=$name" "extendedKeyUsage=clientAuth"
        echo "$dir/$name.pem" ;;
    *) die "unknown command '$cmd' (ca, server, client)" ;;
esac
