#!/bin/sh
# Make a private CA, a broker certificate and client certificates with openssl (docs/security.md).
#
#   make-certs.sh DIR ca                         CA key + certificate (keep ca.key offline)
#   make-certs.sh DIR server HOST [HOST...]      broker cert; HOSTs become DNS/IP subjectAltNames
#   make-certs.sh DIR client NAME                client cert with CN=NAME: a device id,
#                                                "edgeloop-bridge", or an edge gateway's node id
#
# Keys are EC P-256, written with mode 600. Never commit them: inside a git work tree, DIR must
# be a path git ignores (this repository ignores docker/mosquitto/certs/), else nothing is written.
set -eu

[ $# -ge 2 ] || { sed -n '2,10p' "$0"; exit 2; }
dir=$1 kind=$2
shift 2
mkdir -p "$dir"
cd "$dir"
if command -v git >/dev/null 2>&1 && top=$(git rev-parse --show-toplevel 2>/dev/null); then
    git check-ignore -q ca.key || {
        echo "refusing to write keys into $dir: it is inside the git work tree $top and git does not ignore it" >&2
        echo "(they could be committed). Use a directory outside the repository, or one .gitignore covers" >&2
        echo "(in edgeloop: docker/mosquitto/certs/)." >&2
        exit 2
    }
fi
umask 077
days_ca=3650
days=825

newkey() { # $1 = base name, $2 = subject
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
}

sign() { # $1 = base name, $2 = extensions file
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -out "$1.crt" -days "$days" -sha256 -extfile "$2" 2>/dev/null
    rm -f "$1.csr" "$2"
    chmod 644 "$1.crt"
    echo "$dir/$1.crt $dir/$1.key"
}

case "$kind" in
ca)
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -keyout ca.key -out ca.crt -days "$days_ca" -sha256 -subj "/CN=edgeloop CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    chmod 644 ca.crt
    echo "$dir/ca.crt $dir/ca.key"
    ;;
server)
    [ $# -ge 1 ] || { echo "server needs at least one HOST" >&2; exit 2; }
    sans=""
    for host in "$@"; do
        case "$host" in
        *[!0-9.]*) case "$host" in *:*) entry="IP:$host" ;; *) entry="DNS:$host" ;; esac ;;
        *) entry="IP:$host" ;;
        esac
        sans="${sans:+$sans,}$entry"
    done
    newkey server "/CN=$1"
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' "$sans" > server.ext
    sign server server.ext
    ;;
client)
    [ $# -eq 1 ] || { echo "client needs exactly one NAME" >&2; exit 2; }
    case "$1" in
    *[!A-Za-z0-9_.:-]* | "" | [!A-Za-z0-9_]*)
        echo "NAME must be a valid edgeloop id: [A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}" >&2; exit 2 ;;
    esac
    newkey "$1" "/CN=$1"
    printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n' > "$1.ext"
    sign "$1" "$1.ext"
    ;;
*)
    echo "unknown kind $kind (ca, server or client)" >&2; exit 2 ;;
esac
