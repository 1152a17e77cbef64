#!/bin/sh
# Make a private CA, a broker certificate and client certificates with openssl (docs/security.md).
#
#   make-certs.sh DIR ca                         CA key + certificate (keep ca.key offline)
#   make-certs.sh DIR server HOST [HOST...]      broker cert; HOSTs become DNS/IP subjectAltNames
#   make-certs.sh DIR client NAME                client cert with CN=NAME (one identity, one process)
#   make-certs.sh DIR acl FLEET                  DIR/acl: the broker ACL for the identities in FLEET
#   make-certs.sh DIR fleet FLEET                a client cert for every identity in FLEET that has
#                                                none yet, and DIR/acl (FLEET: see docker/mosquitto/fleet)
#
# Keys are EC P-256, written with mode 600. Never commit them: inside a git work tree, DIR must
# be a path git ignores (this repository ignores docker/mosquitto/certs/), else nothing is written.
set -eu

[ $# -ge 2 ] || { sed -n '2,13p' "$0"; exit 2; }
dir=$1 kind=$2
shift 2
start=$(pwd)
case "$0" in /*) self=$0 ;; *) self=$start/$0 ;; esac
mkdir -p "$dir"
cd "$dir"
here=$(pwd)
if [ "$kind" != acl ] && command -v git >/dev/null 2>&1 && top=$(git rev-parse --show-toplevel 2>/dev/null); then
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


# The ACL: one block per identity, generated from the fleet file, so a client may do exactly what
# its role needs (docs/security.md, section 4). Every client id is its identity (mosquitto.conf:
# use_username_as_clientid), so there are no %u/%c patterns: an identity without a block may do nothing.
acl() { # $1 = fleet file; the ACL on stdout
    awk '
    function bad(msg) { printf "%s:%d: %s\n", FILENAME, FNR, msg > "/dev/stderr"; failed = 1; exit 2 }
    function id(x, what) {
        if (x !~ /^[A-Za-z0-9_][A-Za-z0-9_.:-]*$/ || length(x) > 64)
            bad(what " " x " is not a valid edgeloop id: [A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}")
        if (what == "identity") { if (x in seen) bad("identity " x " is listed twice"); seen[x] = 1 }
        return x
    }
    function line(s) { print "topic " s }
    { sub(/#.*/, "") }
    NF == 0 { next }
    $1 == "device" {
        if (NF < 2) bad("device needs a NAME")
        d = id($2, "identity")
        print "\n# device " d ": publishes its own readings and frames, nothing else"
        print "user " d
        if (NF == 2) { line("write sensors/" d "/+"); line("write frames/" d "/+") }
        for (i = 3; i <= NF; i++) { t = id($i, "topic level"); line("write sensors/" d "/" t); line("write frames/" d "/" t) }
        line("read commands/" d "/#")
        next
    }
    $1 == "edge" {
        if (NF < 3) bad("edge needs a NAME and the devices it serves (or *)")
        e = id($2, "identity")
        print "\n# edge " e ": reads the readings of the devices it serves, publishes their results"
        print "user " e
        line("write status/" e); line("read commands/" e "/#"); line("read models/#"); line("write deadletter/edge")
        line("write results/" e "/+"); line("write samples/" e "/+")
        for (i = 3; i <= NF; i++) {
            d = ($i == "*") ? "+" : id($i, "device")
            line("read sensors/" d "/+"); line("read frames/" d "/+")
            line("write results/" d "/+"); line("write samples/" d "/+")
            if (d != "+") line("write status/" d)
        }
        print "# optional integrations: Home Assistant discovery, Sparkplug B ingest (rebirth requests)"
        line("write homeassistant/#"); line("read spBv1.0/#"); line("write spBv1.0/+/NCMD/+")
        next
    }
    $1 == "bridge" {
        if (NF < 2 || NF > 3 || (NF == 3 && $3 != "deploy")) bad("bridge NAME [deploy]")
        b = id($2, "identity")
        print "\n# bridge " b ": reads what the fleet produces" (NF == 3 ? "; deploys models (retrain worker)" : "")
        print "user " b
        line("read results/#"); line("read samples/#"); line("read status/#"); line("read deadletter/#")
        line("read commands/bridge/#"); line("write status/" b); line("write deadletter/bridge")
        line("read models/#")
        if (NF == 3) line("write models/#")
        next
    }
    $1 == "status-reader" {
        if (NF != 2) bad("status-reader NAME")
        r = id($2, "identity")
        print "\n# " r ": the bridge'"'"'s status follower (store.follow_statuses), a connection of its own"
        print "user " r
        line("read status/#")
        next
    }
    $1 == "operator" {
        if (NF != 2) bad("operator NAME")
        o = id($2, "identity")
        print "\n# operator " o ": model deploy / promote / retrain --request, fleet commands"
        print "user " o
        line("read status/#"); line("read deadletter/#"); line("read models/#"); line("write models/#"); line("write commands/#")
        next
    }
    { bad("unknown role " $1 " (device, edge, bridge, status-reader, operator)") }
    END { if (failed) exit 2 }
    ' "$1"
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
acl | fleet)
    [ $# -eq 1 ] || { echo "$kind needs exactly one FLEET file" >&2; exit 2; }
    case "$1" in /*) fleet=$1 ;; *) fleet=$start/$1 ;; esac
    { printf '# edgeloop broker ACL, generated by make-certs.sh from %s: do not edit, regenerate.\n' "${1##*/}"
      printf '# Every client id is its identity; anything not granted here is denied. docs/security.md\n'
      acl "$fleet"; } > acl.new || { rm -f acl.new; exit 2; }
    chmod 644 acl.new
    mv acl.new acl
    if [ "$kind" = fleet ]; then
        for name in $(awk '{ sub(/#.*/, "") } NF >= 2 { print $2 }' "$fleet"); do
            [ -f "$name.crt" ] || sh "$self" "$here" client "$name" >/dev/null
            echo "$dir/$name.crt $dir/$name.key"
        done
    fi
    echo "$dir/acl"
    ;;
*)
    echo "unknown kind $kind (ca, server, client, acl or fleet)" >&2; exit 2 ;;
esac
