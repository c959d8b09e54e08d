"""Network namespaces made for a test or the demo, removed by name."""

import secrets
import signal
import subprocess

RUN_TIMEOUT = 60


def suffix(length: int = 6) -> str:
    return secrets.token_hex(length // 2 + 1)[:length]


def sh(args: list, check=True, timeout=RUN_TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


class Namespace:
    """A named network namespace under /run/netns."""

    def __init__(self, prefix: str):
        self.name = f"{prefix}-{suffix()}"
        sh(["ip", "netns", "add", self.name])
        self.path = f"/run/netns/{self.name}"
        self.run(["ip", "link", "set", "lo", "up"])

    def run(self, args: list, check=True, timeout=RUN_TIMEOUT, **kwargs):
        return sh(["ip", "netns", "exec", self.name, *args], check=check, timeout=timeout, **kwargs)

    def ip(self, *args: str) -> str:
        return sh(["ip", "-n", self.name, *args]).stdout

    def ip_json(self, *args: str):
        import json

        out = sh(["ip", "-j", "-n", self.name, *args]).stdout
        return json.loads(out) if out.strip() else []

    def set_tcp_time_wait(self, seconds: int) -> None:
        """This namespace's conntrack TIME_WAIT timeout (120 s by default; never the root's): a
        TCP connection's flow record comes when conntrack forgets it, that long after its close."""
        self.run(["sysctl", "-qw", f"net.netfilter.nf_conntrack_tcp_timeout_time_wait={int(seconds)}"])

    def expire_conntrack(self) -> None:
        """A dump of this namespace's conntrack table: the kernel kills the expired entries a
        dump walks past, as its garbage collection would (which can take up to a minute to
        come round), so their DESTROY events (and TCP flow records) come now."""
        self.run(["conntrack", "-L"], check=False)

    def delete(self) -> None:
        sh(["ip", "netns", "del", self.name], check=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.delete()


def own_view_prefix(netns: str, hidden=("/run/netns",)) -> list:
    """argv prefix: run a command in network namespace `netns` but in mount and PID
    namespaces of its own, with its own /proc and an empty tmpfs over each `hidden`
    directory, so it sees neither the runtime's netns directory, nor any mount made
    after it started, nor /proc/<pid> of a process outside (a containerized weftd
    without the netns mount).  The command runs as PID 1 of its namespace, the child
    of an `unshare` that ignores SIGTERM (signal the child; cluster.Node does)."""
    script = "".join(f"mount -t tmpfs -o size=64k,mode=0755 weft-hidden {d} && " for d in hidden)
    return ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private", "--pid",
            "--fork", "--mount-proc", "--kill-child=SIGTERM", "sh", "-c", script + 'exec "$@"', "own-view"]


def file_tail(path: str, lines: int = 30) -> str:
    """The last lines of a log file a test process wrote ("" when there is none)."""
    try:
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


def stop_process(process, timeout: float, sig=signal.SIGTERM) -> None:
    """Signal our own child (by its Popen), wait, SIGKILL if it lingers; no-op when gone."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
