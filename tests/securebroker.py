"""The production broker configuration (docker/mosquitto/) run on a free loopback port, for tests.

Why this module: the security tests must exercise the files users deploy, not a look-alike.
``production_conf`` keeps the security-relevant lines of ``docker/mosquitto/mosquitto.conf``
(listener, TLS, identity, ACL, limits) and points its container paths at the test's
certificates; persistence and logging come from the test launcher. ``production_acl`` is what
``docker/mosquitto/make-certs.sh acl`` generates for a fleet file (``TEST_FLEET`` unless the
test names its own identities), with the test observer appended. A line the rewrite does not
understand fails loudly, so the shipped files and the tests cannot drift apart silently.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from certs import Issued
from lab.servers import Mosquitto

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "docker" / "mosquitto" / "mosquitto.conf"
PASSWORD_CONF = REPO / "docker" / "mosquitto" / "mosquitto-passwords.conf"
ACL = REPO / "docker" / "mosquitto" / "acl"
FLEET = REPO / "docker" / "mosquitto" / "fleet"
MAKE_CERTS = REPO / "docker" / "mosquitto" / "make-certs.sh"

#: The identities most tests use: devices, an edge serving dev-a, a gateway serving every device,
#: the bridge and its extra connections (BridgeConfig.identities), an operator.
TEST_FLEET = """\
device dev-a
device dev-b
device dev-c
edge edge-a dev-a
edge edge-gateway-1 *
bridge edgeloop-bridge deploy
bridge edgeloop-bridge-loop
bridge edgeloop-bridge-deployer deploy
status-reader edgeloop-bridge-status
operator edgeloop-operator
"""

#: Directives taken over from the production config; everything else must be in DROPPED.
KEPT = {
    "per_listener_settings", "allow_anonymous", "acl_file", "listener", "protocol", "cafile", "certfile",
    "keyfile", "require_certificate", "use_identity_as_username", "use_username_as_clientid", "tls_version",
    "max_connections", "max_packet_size", "max_inflight_messages", "max_queued_messages", "max_queued_bytes",
    "max_keepalive", "persistent_client_expiration", "retain_available", "password_file",
}
DROPPED = {"persistence", "persistence_location", "autosave_interval", "log_dest", "log_type", "connection_messages"}

#: Observes everything: used by tests to see what the broker let through. Never in the shipped ACL.
OBSERVER = "test-observer"


def generate_acl(fleet: str, workdir: Path) -> str:
    """The ACL ``make-certs.sh acl`` generates for the fleet file text ``fleet``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "fleet").write_text(fleet)
    done = subprocess.run(["sh", str(MAKE_CERTS), str(workdir), "acl", str(workdir / "fleet")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return (workdir / "acl").read_text()


def production_acl(workdir: Path, fleet: str = TEST_FLEET, extra: str = "") -> str:
    """The generated ACL plus the test observer (which may do anything) and ``extra`` lines."""
    return generate_acl(fleet, workdir / "fleet-acl") + f"\n\nuser {OBSERVER}\ntopic readwrite #\n" + extra + "\n"


def production_conf(ca_file: Path, server: Issued, acl_file: Path, conf: Path = CONF,
                    password_file: Path | None = None) -> str:
    paths = {
        "/mosquitto/config/passwords": str(password_file),
        "/mosquitto/config/certs/ca.crt": str(ca_file),
        "/mosquitto/config/certs/server.crt": str(server.cert),
        "/mosquitto/config/certs/server.key": str(server.key),
        "/mosquitto/config/acl": str(acl_file),
    }
    out = []
    for line in conf.read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] in DROPPED:
            continue
        assert words[0] in KEPT, f"{conf}: directive {words[0]!r} is neither kept nor dropped by the tests"
        if words[0] == "listener":
            line = "listener {port} {host}"
        for container_path, local in paths.items():
            line = line.replace(container_path, local)
        assert "/mosquitto/" not in line, f"{conf}: unmapped container path in {line!r}"
        out.append(line)
    return "\n".join(out)


def secure_broker(workdir: Path, ca_file: Path, server: Issued, *, fleet: str = TEST_FLEET,
                  extra_acl: str = "", passwords: Path | None = None) -> Mosquitto:
    """A (not yet started) mosquitto running the production TLS listener and the ACL of ``fleet``.

    With ``passwords`` (a mosquitto_passwd file), the password variant
    (docker/mosquitto/mosquitto-passwords.conf) instead of client certificates.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    acl = workdir / "acl"
    acl.write_text(production_acl(workdir, fleet, extra_acl))
    conf = PASSWORD_CONF if passwords is not None else CONF
    return Mosquitto(workdir, listener_conf=production_conf(ca_file, server, acl, conf, passwords))


def identity_link(port: int, ca_file: Path, issued: Issued, client_id: str, subscriptions=(), on_message=None):  # noqa: ANN001, ANN201
    """A started MqttLink to a secure broker on ``port`` with the identity (client certificate) ``issued``."""
    from edgeloop.mqtt import MqttLink, MqttSettings, TlsSettings

    settings = MqttSettings(url=f"mqtts://127.0.0.1:{port}",
                            tls=TlsSettings(ca_file=ca_file, cert_file=issued.cert, key_file=issued.key))
    link = MqttLink(settings, client_id, subscriptions=list(subscriptions), on_message=on_message)
    link.start(wait_s=10)
    return link
