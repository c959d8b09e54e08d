"""DEL off the caller's path: cut the pod off now, tear the attachment down after.

When weftd serves a DEL, the caller waits only for the cut-off (cut_off): under the
attachment lock, the teardown's record is written to <dataDir>/teardown/<host veth>,
then the host veth is set down, taken off the bridge and renamed wfx<digest>
(links.retire), and the pod's end is set down and renamed the same inside the pod's
namespace.  From that moment nothing can send from the pod on the bridge, the
attachment is gone from weft's point of view (CHECK fails, GC's sweep of wft links
does not see it) and both names are free for a new ADD (of the same container ID and
interface, or of another one into the same namespace).  The kernel's veth deletion (~15 ms of RCU waits) and the rest happen in
weftd's background queue (agent/teardown_queue.py), by finish(), in this order:

  1. the port leaves source validation;
  2. the pod's addresses leave the serving agent's policy sets and their conntrack
     entries are flushed, so the next pod given an address inherits nothing (the pod
     has been cut off since the DEL: no new entry can appear);
  3. the retired veth is deleted (the pod's end goes with it);
  4. the addresses are released through the IPAM delegate, which records the release
     in the allocation history: only now, once nothing can send from them;
  5. the record is removed.
A step that fails keeps the record: the next try (queue, next agent start, GC) does
the whole sequence again, every step idempotent.

Whoever holds the attachment lock and finds a record finishes it: the queue's worker,
an ADD of the same attachment (finish_pending, before it creates anything), a GC
(finish_all, before it sweeps or collects addresses).  So an address is never
released, nor reused, before its teardown has run, even across an agent kill.
Standalone (no weftd) a DEL does all of it synchronously, as before.
"""

import json
import os

from ..cni import invocation, log
from ..cni.env import CniEnv, parse_cni_args
from ..datapath.naming import retired_name
from ..fsutil import write_atomic
from . import lock as attachment_lock

TEARDOWN_DIR = "teardown"


def record_path(data_dir: str, host_veth: str) -> str:
    return os.path.join(data_dir, TEARDOWN_DIR, host_veth)


def cut_off(cfg, env, conf: dict, host_veth: str) -> bool:
    """The caller's part of a DEL served by weftd (the caller holds the attachment
    lock): record, retire the host veth.  False when there is no host veth to cut off
    (the DEL then runs synchronously: it has nothing slow to do)."""
    from ..datapath import links, netns

    with netns.open_node() as rt:
        link = rt.link(host_veth)
        if link is None:
            return False
        record = {"containerID": env.container_id, "ifname": env.ifname, "netns": env.netns,
                  "args": env.args, "path": env.path, "conf": conf, "hostVeth": host_veth,
                  "retired": retired_name(host_veth), "index": link.index}
        os.makedirs(os.path.join(cfg.data_dir, TEARDOWN_DIR), mode=0o700, exist_ok=True)
        write_atomic(record_path(cfg.data_dir, host_veth), json.dumps(record), durable=False)
        links.retire(rt, host_veth, record["retired"])
    _free_pod_name(env, record["retired"])
    return True


def _free_pod_name(env, retired: str) -> None:
    """The pod's end renamed too (it goes with the host end later): its interface name is
    free at once for the next attachment in that namespace (a runtime that reuses it)."""
    from ..datapath import links, netns

    pod = netns.PodNetns(env.netns, invocation.current().netns_fd)
    if not env.netns or not netns.netns_exists(pod):
        return  # the namespace is gone, and the pod's end with it
    with netns.open_container(pod) as crt:
        links.retire(crt, env.ifname, retired)


def read(data_dir: str, host_veth: str):
    """The pending teardown's record, or None."""
    try:
        with open(record_path(data_dir, host_veth)) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError:  # a record cut short (a crash while writing it: its veth was never retired)
        return {"hostVeth": host_veth, "broken": True}


def pending(data_dir: str) -> list:
    """Host veth names with a teardown record in data_dir."""
    try:
        return sorted(name for name in os.listdir(os.path.join(data_dir, TEARDOWN_DIR))
                      if name.startswith("wft"))
    except FileNotFoundError:
        return []


def finish_pending(data_dir: str, host_veth: str) -> bool:
    """Finish host_veth's pending teardown, if any (the caller holds its lock).
    True when there was one."""
    record = read(data_dir, host_veth)
    if record is None:
        return False
    finish(data_dir, record)
    return True


def finish_locked(data_dir: str, host_veth: str, lock_timeout: float) -> bool:
    """The queue's worker: take the attachment lock, finish what is still pending."""
    with attachment_lock.attachment(data_dir, host_veth, "DEL", lock_timeout) as held:
        done = finish_pending(data_dir, host_veth)
        held.remove = True
    return done


def finish_all(data_dir: str, lock_timeout: float, errors: list) -> None:
    """GC: every pending teardown of data_dir finished first (so the sweep and the
    address collection see what the DELs said)."""
    for host_veth in pending(data_dir):
        try:
            finish_locked(data_dir, host_veth, lock_timeout)
        except Exception as exc:  # GC goes on; the record stays for the next try
            errors.append(exc)


def finish(data_dir: str, record: dict) -> None:
    """Steps 1-5 of the module's docstring; raises (record kept) when one fails."""
    from ..datapath import links, netns
    from . import config as plugin_config, delegate, source_validation

    host_veth = record["hostVeth"]
    if record.get("broken"):  # written only partly: the DEL failed before retiring anything
        os.unlink(record_path(data_dir, host_veth))
        return
    conf = record["conf"]
    cfg = plugin_config.load(conf, "DEL")
    env = CniEnv("DEL", record["containerID"], record["netns"], record["ifname"],
                 record["args"] if isinstance(record["args"], dict) else parse_cni_args(record["args"]),
                 list(record["path"]))
    with netns.open_node() as rt:
        same = rt.link(host_veth)  # the agent was killed between the record and the cut-off
        if same is not None and same.index == record["index"]:
            links.retire(rt, host_veth, record["retired"])
    source_validation.detach(cfg, host_veth)
    ips = disconnect(cfg, env)
    with netns.open_node() as rt:
        links.delete(rt, record["retired"])
    delegate.run(cfg.ipam_type, "DEL", env, cfg.delegate_conf)
    try:
        os.unlink(record_path(data_dir, host_veth))
    except FileNotFoundError:
        pass
    log.record(cfg.log_file, {"command": "DEL", "containerID": env.container_id, "ifname": env.ifname,
                              "teardown": "finished", "addresses": [str(ip) for ip in ips]})


def disconnect(cfg, env) -> list:
    """What must happen to the attachment's addresses before they are released: they
    leave the serving agent's policy sets (nobody's when standalone) and their conntrack
    entries are flushed, so the next pod given one inherits nothing.  The addresses."""
    ips = held_addresses(cfg, env)
    if ips:
        invocation.current().agent_detaching(cfg.name, ips)
        from ..datapath import conntrack

        conntrack.flush(ips)
    return ips


def held_addresses(cfg, env) -> list:
    """The attachment's addresses.  weft-ipam: what its index still lists (so a
    teardown finished again after its release, an agent killed in between, touches no
    address that may have gone to another pod since); another IPAM: its prevResult's."""
    import ipaddress

    if cfg.ipam_type == "weft-ipam":
        from ..ipam import config as ipam_config
        from ..ipam.store import Attachment, Store

        ipam_cfg = ipam_config.load(cfg.delegate_conf, need_ranges=False)
        store = Store(ipam_cfg.data_dir, ipam_cfg.network)
        # the index is replaced atomically and only this attachment's calls change it (we
        # hold its lock): read without the store's lock, which the release takes next
        return store.indexed_ips(Attachment(env.container_id, env.ifname)) or []
    if not cfg.prev_result:
        return []
    from ..cni import result as cni_result

    return list(dict.fromkeys(ipaddress.ip_interface(ip["address"]).ip
                              for ip in cni_result.normalize(cfg.prev_result)["ips"]))
