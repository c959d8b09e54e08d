"""A fault-injection soak of the per-pod path: two nodes (real etcd, a real weftd each),
ADD/DEL/CHECK/GC as a runtime sends them, while faults are injected:

  plugin kill    kill -9 of the `weft` executable mid-call (by its PID)
  agent kill     kill -9 of a node's weftd, restarted at once
  etcd pause     SIGSTOP/SIGCONT of etcd (by its PID)
  full disk      the node's dataDir (a small tmpfs) filled to the last page
  read-only      the node's dataDir remounted read-only

The workers behave like a runtime: a failed or killed ADD is followed by DEL, a failed
DEL is retried until it succeeds.  At the end every fault is lifted, the pending DELs
finish, and the audit counts what must be zero: IP reservations that belong to no live
attachment, weft links and pod interfaces without one, nftables elements without a pod,
and addresses the allocation history shows held by two attachments at once.  A last
round on quiet agents compares each weftd's open descriptors before and after its calls.

tests/cluster/test_soak.py runs it bounded; `make soak` runs a longer one.
"""

import ipaddress
import json
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

from .attachment import host_veth, wait_torn_down
from .cluster import descriptors_kept, wait_for
from .namespaces import Namespace, sh

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
DATA_SIZE = "2m"  # the node's dataDir tmpfs: small enough to fill in a moment
CALL_TIMEOUT = 120.0  # a call that takes this long is a hang: the soak fails


@dataclass
class Stats:
    ops: dict = field(default_factory=dict)
    faults: dict = field(default_factory=dict)
    outcomes: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, table: str, key: str) -> None:
        with self.lock:
            getattr(self, table)[key] = getattr(self, table).get(key, 0) + 1

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def summary(self) -> dict:
        return {"operations": sum(self.ops.values()), "by_operation": dict(sorted(self.ops.items())),
                "faults": sum(self.faults.values()), "by_fault": dict(sorted(self.faults.items())),
                "outcomes": dict(sorted(self.outcomes.items())), "problems": list(self.problems)}


class Slot:
    """One pod sandbox of a node: absent, present (ADD succeeded) or dirty (needs DEL)."""

    def __init__(self, node, index: int, generation: int = 0):
        self.node, self.index = node, index
        self.ns = Namespace(f"wsk{node.index}")
        self.generation = generation
        self.state, self.result = "absent", None

    @property
    def cid(self) -> str:
        return f"soak{self.node.index}-{self.index}-{self.generation}"

    @property
    def ip(self):
        return self.result["ips"][0]["address"].split("/")[0] if self.result else None


class Soak:
    def __init__(self, cluster, seconds: float, max_ops: int, slots: int = 6, seed: int = None):
        self.cluster = cluster
        self.seconds, self.max_ops = seconds, max_ops
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.stats = Stats()
        self.cni = os.path.join(cluster.installed, "cni")
        self.stop = threading.Event()
        self.nodes, self.slots, self.mounts = [], {}, []
        self.faulted = {}  # node index -> "full" | "ro" (the worker retries DEL later)
        self.n_slots = slots
        self.agent_lock = threading.Lock()

    # -- set-up ------------------------------------------------------------------
    def setup(self):
        self.cluster.set_network("weft", VXLAN)
        for _ in range(2):
            node = self.cluster.add_node()
            data = os.path.join(node.dir, "data")
            os.makedirs(data, exist_ok=True)
            sh(["mount", "-t", "tmpfs", "-o", f"size={DATA_SIZE},mode=0755", "tmpfs", data])
            self.mounts.append(data)
            node.soak_data = data
            node.ipam_dir = os.path.join(data, "ipam")  # where the agent and weft-ipam keep it
            node.start_agent()
            self.nodes.append(node)
        for node in self.nodes:
            node.wait_ready()
            self.slots[node.index] = [Slot(node, i) for i in range(self.n_slots)]

    def conf(self, node) -> dict:
        return node.netconf(agentSocket=os.path.join(node.run_dir, "weftd.sock"), ipMasq=True,
                            dataDir=os.path.join(node.soak_data, "weft"),
                            ipam={"type": "weft-ipam", "dataDir": node.ipam_dir})

    def cleanup(self):
        for slots in self.slots.values():
            for slot in slots:
                slot.ns.delete()
        for node in self.nodes:
            node.stop_agent(signal.SIGKILL)
        for data in self.mounts:
            sh(["mount", "-o", "remount,rw", data], check=False)
            sh(["umount", "-l", data], check=False)

    # -- one CNI call, possibly killed -----------------------------------------------
    def call(self, node, command: str, slot=None, conf=None, kill_after=None):
        """(exit code, parsed stdout or None, killed?)"""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(CNI_COMMAND=command, CNI_PATH=self.cni)
        if slot is not None:
            env.update(CNI_CONTAINERID=slot.cid, CNI_NETNS=slot.ns.path, CNI_IFNAME="eth0",
                       CNI_ARGS=f"K8S_POD_NAMESPACE=soak;K8S_POD_NAME={slot.cid}")
        proc = subprocess.Popen(["ip", "netns", "exec", node.ns.name, f"{self.cni}/weft"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=env)
        stdin = json.dumps(conf or self.conf(node)).encode()
        killed = False
        if kill_after is not None:
            proc.stdin.write(stdin)
            proc.stdin.close()
            time.sleep(kill_after)
            if proc.poll() is None:
                proc.kill()  # our own child, by PID: a runtime that gave up hard
                killed = True
            out = proc.stdout.read()
            proc.stdout.close()
            proc.wait(timeout=CALL_TIMEOUT)
        else:
            out, _ = proc.communicate(stdin, timeout=CALL_TIMEOUT)
        parsed = None
        try:
            parsed = json.loads(out) if out.strip() else None
        except ValueError:
            pass
        return proc.returncode, parsed, killed

    def op(self, node, command: str, slot=None, kill=None, conf=None, label=None):
        """One counted call: (succeeded, CNI error code or None, killed)."""
        self.stats.count("ops", command)
        code, parsed, killed = self.call(node, command, slot, conf=conf, kill_after=kill)
        cni_code = parsed.get("code") if isinstance(parsed, dict) and code else None
        label = label or command
        self.stats.count("outcomes", f"{label} killed" if killed else
                         f"{label} " + ("ok" if code == 0 else f"code {cni_code}"))
        if code != 0 and not killed and cni_code in (None, 999):
            self.stats.problem(f"{label} answered {cni_code or 'no CNI error'}: "
                               f"{(parsed or {}).get('msg', '')[:300] if isinstance(parsed, dict) else ''}")
        if code == 0 and not killed and command == "ADD" and slot is not None:
            slot.result = parsed
        return code == 0 and not killed, cni_code, killed

    # -- the runtime's side -----------------------------------------------------------
    def step(self, node, rng):
        slot = rng.choice(self.slots[node.index])
        kill = rng.uniform(0.0, 0.25) if rng.random() < 0.08 else None
        if kill is not None:
            self.stats.count("faults", "plugin kill")
        if slot.state == "absent":
            self.add(node, slot, kill)
        elif slot.state == "dirty":
            self.delete(node, slot, kill)
        else:
            choice = rng.random()
            if choice < 0.35:
                self.check(node, slot)
            elif choice < 0.80:
                self.delete(node, slot, kill)
            elif choice < 0.85:
                self.add_again(node, slot, kill)
            else:
                self.gc(node)

    def add(self, node, slot, kill):
        ok, cni_code, _ = self.op(node, "ADD", slot, kill)
        if ok:
            slot.state = "present"
            self.no_double_holding(slot)
            return
        if cni_code == 102:
            self.stats.problem(f"ADD of new sandbox {slot.cid} found it existing (102)")
        slot.state, slot.result = "dirty", None  # a runtime DELs what failed (or what it killed)

    def add_again(self, node, slot, kill):
        result = slot.result
        ok, cni_code, killed = self.op(node, "ADD", slot, kill, label="ADD of a live attachment")
        slot.result = result
        if ok:
            self.stats.problem(f"second ADD of live {slot.cid} succeeded")
        elif killed or cni_code not in (102, 11):
            slot.state = "dirty"  # the runtime saw an ADD fail: it DELs the sandbox

    def delete(self, node, slot, kill):
        ok, _, _ = self.op(node, "DEL", slot, kill)
        if ok:
            slot.state, slot.result = "absent", None
            slot.generation += 1  # a new sandbox next time, as a runtime would make
        else:
            slot.state = "dirty"

    def check(self, node, slot):
        _, cni_code, _ = self.op(node, "CHECK", slot, conf={**self.conf(node), "prevResult": slot.result})
        if cni_code == 104:
            self.stats.problem(f"CHECK of live {slot.cid} found drift")

    def gc(self, node):
        valid = [{"containerID": s.cid, "ifname": "eth0"} for s in self.slots[node.index]
                 if s.state == "present"]
        self.op(node, "GC", conf={**self.conf(node), "cniVersion": "1.1.0",
                                  "cni.dev/valid-attachments": valid})

    def no_double_holding(self, slot):
        for slots in self.slots.values():
            for other in slots:
                if other is not slot and other.state == "present" and other.ip == slot.ip:
                    self.stats.problem(f"{slot.cid} and {other.cid} both hold {slot.ip}")

    def worker(self, node, seed: int, deadline: float):
        rng = random.Random(seed)
        while not self.stop.is_set() and time.monotonic() < deadline:
            with self.stats.lock:
                if sum(self.stats.ops.values()) >= self.max_ops:
                    return
            try:
                self.step(node, rng)
            except Exception as exc:  # a hung call (TimeoutExpired) or a harness bug
                self.stats.problem(f"{node.name}: {exc!r}")
                self.stop.set()

    # -- faults -----------------------------------------------------------------------
    def fault_loop(self, seed: int, deadline: float):
        rng = random.Random(seed)
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.stop.wait(rng.uniform(0.3, 0.9))
            if self.stop.is_set():
                return
            kind = rng.choice(["agent kill", "etcd pause", "full disk", "read-only"])
            try:
                self.inject(kind, rng.choice(self.nodes), rng)
            except Exception as exc:  # a harness failure: stop and report it
                self.stats.problem(f"injecting {kind}: {exc!r}")
                self.stop.set()

    def inject(self, kind: str, node, rng):
        if kind == "read-only" and not remount(node.soak_data, "ro"):
            self.stats.count("outcomes", "read-only skipped: mount busy")
            return
        self.stats.count("faults", kind)
        if kind == "agent kill":
            with self.agent_lock:
                node.agent.kill()  # SIGKILL our own child, by PID
                node.agent.wait()
                node.start_agent()
        elif kind == "etcd pause":
            pid = self.cluster.etcd.pid
            os.kill(pid, signal.SIGSTOP)
            try:
                self.stop.wait(rng.uniform(0.3, 1.5))
            finally:
                os.kill(pid, signal.SIGCONT)
        elif kind == "full disk":
            filler = fill(node.soak_data)
            try:
                self.stop.wait(rng.uniform(0.5, 1.5))
            finally:
                for path in filler:
                    os.unlink(path)
        else:
            try:
                self.stop.wait(rng.uniform(0.5, 1.5))
            finally:
                sh(["mount", "-o", "remount,rw", node.soak_data])

    # -- the run and the audit ---------------------------------------------------------
    def run(self) -> dict:
        deadline = time.monotonic() + self.seconds
        threads = [threading.Thread(target=self.worker, args=(node, self.seed + node.index, deadline))
                   for node in self.nodes]
        threads.append(threading.Thread(target=self.fault_loop, args=(self.seed - 1, deadline)))
        for thread in threads:
            thread.start()
        for thread in threads[:-1]:
            thread.join()
        self.stop.set()
        threads[-1].join()
        self.settle()
        descriptors = self.descriptor_round()
        report = self.stats.summary()
        report["weftd descriptors"] = descriptors
        report["seed"] = self.seed
        self.history_records = 0
        report["teardown drained s"] = self.drain_teardown()
        report["leaks"] = self.audit()
        report["history records audited"] = self.history_records
        return report

    def settle(self):
        """Faults lifted: agents up, every dirty slot DEL'd (a runtime retries), one GC."""
        for node in self.nodes:
            if node.agent is None or node.agent.poll() is not None:
                node.start_agent()
            node.wait_ready()
        for node in self.nodes:
            for slot in self.slots[node.index]:
                if slot.state == "dirty":
                    wait_for(lambda: self._del_ok(node, slot), 60, interval=0.5,
                             what=f"DEL of {slot.cid} succeeding after the faults were lifted")
            self.gc(node)

    def descriptor_round(self, cycles: int = 9) -> dict:
        """weftd's open descriptors (/proc/<pid>/fd) before and after a round of
        ADD/CHECK/DEL on each node, one agent process throughout, a third of the ADDs'
        callers killed mid-call: a descriptor weftd received and kept (it would pin a dead
        pod's namespace and veth) shows as a difference, reported as a problem."""
        found = {}
        for node in self.nodes:
            slot = Slot(node, len(self.slots[node.index]))
            self.slots[node.index].append(slot)  # audited and removed with the others
            self.cycle(node, slot, None)  # warm: whatever the path opens once and keeps
            wait_torn_down(os.path.join(node.soak_data, "weft"))  # its teardown's descriptors are transient
            pid, before, threads = node.agent_pid(), node.agent_descriptors(), node.agent_threads()
            for trial in range(cycles):
                self.cycle(node, slot, 0.02 * trial if trial % 3 == 1 else None)
            wait_torn_down(os.path.join(node.soak_data, "weft"))
            try:  # an abandoned ADD's handler may still be unwinding
                wait_for(lambda: not descriptors_kept(before, node.agent_descriptors(),
                                                      node.agent_threads() - threads), 15, interval=0.2)
            except TimeoutError:
                pass
            after, new_threads = node.agent_descriptors(), node.agent_threads() - threads
            kept = descriptors_kept(before, after, new_threads)
            found[node.name] = {"pid": pid, "before": len(before), "after": len(after),
                                "new threads": new_threads, "kept": kept,
                                "namespaces held": sum(1 for d in after if d.startswith("namespace "))}
            if node.agent_pid() != pid or kept:
                self.stats.problem(f"{node.name}: weftd kept descriptors over the round: {kept}")
        return found

    def cycle(self, node, slot, kill):
        self.add(node, slot, kill)
        if slot.state == "present":
            self.check(node, slot)
        wait_for(lambda: self._del_ok(node, slot), 60, interval=0.5,
                 what=f"DEL of {slot.cid} in the descriptor round")

    def _del_ok(self, node, slot) -> bool:
        self.delete(node, slot, None)
        return slot.state == "absent"

    def drain_teardown(self, timeout: float = 60.0) -> float:
        """Seconds until every DEL's background teardown (plugin/teardown.py) ended: the
        audit judges what is left once weft says it is done, wfx links included."""
        return sum(wait_torn_down(os.path.join(node.soak_data, "weft"), timeout) for node in self.nodes)

    def audit(self) -> dict:
        leaks = {"ips": [], "links": [], "pod interfaces": [], "nft elements": [], "held twice": []}
        for node in self.nodes:
            live = {s.cid: s for s in self.slots[node.index] if s.state == "present"}
            store = os.path.join(node.ipam_dir, "weft")
            for name in os.listdir(store):
                try:
                    ipaddress.ip_address(name)
                except ValueError:
                    continue
                with open(os.path.join(store, name), newline="") as handle:
                    cid = handle.read().split("\r\n")[0]
                if cid not in live or live[cid].ip != name:
                    leaks["ips"].append(f"{node.name}: {name} reserved for {cid!r}")
            for slot in live.values():
                if not os.path.exists(os.path.join(store, slot.ip)):
                    leaks["ips"].append(f"{node.name}: live {slot.cid}'s {slot.ip} has no reservation")
            wanted = {host_veth(cid) for cid in live}
            have = {link["ifname"] for link in node.ns.ip_json("link", "show")
                    if link["ifname"].startswith(("wft", "wfx"))}  # wfx: cut off, never torn down
            leaks["links"] += [f"{node.name}: {name}" for name in sorted(have ^ wanted)]
            for slot in self.slots[node.index]:
                has = any(link["ifname"] == "eth0" for link in slot.ns.ip_json("link", "show"))
                if has != (slot.state == "present"):
                    leaks["pod interfaces"].append(f"{slot.cid}: eth0 {'left' if has else 'missing'}")
            # an element whose address or attachment is no live pod's (wherever masquerade
            # keeps its per-pod state, none may outlive the pod)
            expected = {(s.ip, f"{s.cid}/eth0") for s in live.values()}
            leaks["nft elements"] += [f"{node.name}: {e}" for e in sorted(nft_pod_elements(node) - expected)]
            records, overlaps = overlapping_holdings(os.path.join(store, "history.jsonl"))
            self.history_records += records
            leaks["held twice"] += overlaps
        return leaks


def nft_pod_elements(node) -> set:
    proc = node.ns.run(["nft", "-j", "list", "table", "inet", "weft_weft"], check=False)
    if proc.returncode != 0:
        return set()
    found = set()
    for item in json.loads(proc.stdout)["nftables"]:
        nft_set = item.get("set")
        if not nft_set or nft_set["name"] not in ("pods4", "pods6"):
            continue
        for elem in nft_set.get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:
                found.add((str(elem["elem"]["val"]), elem["elem"].get("comment", "")))
            else:
                found.add((str(elem), ""))
    return found


def overlapping_holdings(history_path: str) -> list:
    """(records read, addresses the history shows allocated to one attachment while
    another held them)."""
    holders, overlaps = {}, []
    try:
        with open(history_path) as handle:
            lines = handle.readlines()
    except FileNotFoundError:
        return 0, []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        who = (record.get("containerID"), record.get("ifname"))
        ip = record.get("ip")
        if record.get("event") == "allocate":
            if ip in holders and holders[ip] != who:
                overlaps.append(f"{ip}: allocated to {who[0]} while {holders[ip][0]} held it")
            holders[ip] = who
        elif record.get("event") == "release" and holders.get(ip) == who:
            del holders[ip]
    return len(lines), overlaps


def remount(path: str, mode: str, tries: int = 40) -> bool:
    """mount -o remount,<mode>; a file open for writing makes `ro` busy for a moment."""
    for _ in range(tries):
        if sh(["mount", "-o", f"remount,{mode}", path], check=False).returncode == 0:
            return True
        time.sleep(0.02)
    return False


def fill(directory: str) -> list:
    """Fill the file system holding directory to its last page; returns the files."""
    made, block = [], b"x" * 65536
    while True:
        path = os.path.join(directory, f".soak-filler-{len(made)}")
        made.append(path)
        try:
            with open(path, "wb") as handle:
                while True:
                    handle.write(block)
                    handle.flush()
        except OSError:
            pass
        if os.path.getsize(path) == 0:
            return made
