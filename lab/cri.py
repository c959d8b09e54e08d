"""A minimal CRI client (runtime.v1 RuntimeService) over grpcio, no generated code.

Only the calls the tests and the benchmark use are described: Version, Status,
RunPodSandbox, PodSandboxStatus, StopPodSandbox, RemovePodSandbox, ListPodSandbox.
The schema below is written from the public CRI API (kubernetes/cri-api,
pkg/apis/runtime/v1/api.proto): same package, message and field names, same field
numbers, only the fields used here.  Protobuf ignores fields a peer does not know,
so a subset is wire-compatible with the full API.  The message classes are built at
import time into a private descriptor pool (no protoc, no grpcio-tools).

    client = RuntimeClient("/path/containerd.sock")
    sandbox_id = client.run_pod_sandbox(name="web", uid="u1", namespace="default")
    client.pod_sandbox_status(sandbox_id).network.ip
"""

import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "runtime.v1"
SERVICE = f"/{PACKAGE}.RuntimeService/"
CALL_TIMEOUT = 120.0  # seconds; RunPodSandbox waits for CNI ADD

_F = descriptor_pb2.FieldDescriptorProto
STRING, INT32, UINT32, INT64, BOOL = _F.TYPE_STRING, _F.TYPE_INT32, _F.TYPE_UINT32, _F.TYPE_INT64, _F.TYPE_BOOL
REPEATED = "repeated"
MAP = "map"  # map<string, string>

# message -> [(field name, number, type or message/enum name, flag)]
MESSAGES = {
    "VersionRequest": [("version", 1, STRING, None)],
    "VersionResponse": [("version", 1, STRING, None), ("runtime_name", 2, STRING, None),
                        ("runtime_version", 3, STRING, None), ("runtime_api_version", 4, STRING, None)],
    "DNSConfig": [("servers", 1, STRING, REPEATED), ("searches", 2, STRING, REPEATED),
                  ("options", 3, STRING, REPEATED)],
    "PortMapping": [("protocol", 1, "Protocol", None), ("container_port", 2, INT32, None),
                    ("host_port", 3, INT32, None), ("host_ip", 4, STRING, None)],
    "PodSandboxMetadata": [("name", 1, STRING, None), ("uid", 2, STRING, None),
                           ("namespace", 3, STRING, None), ("attempt", 4, UINT32, None)],
    "LinuxPodSandboxConfig": [("cgroup_parent", 1, STRING, None)],
    "PodSandboxConfig": [("metadata", 1, "PodSandboxMetadata", None), ("hostname", 2, STRING, None),
                         ("log_directory", 3, STRING, None), ("dns_config", 4, "DNSConfig", None),
                         ("port_mappings", 5, "PortMapping", REPEATED), ("labels", 6, STRING, MAP),
                         ("annotations", 7, STRING, MAP), ("linux", 8, "LinuxPodSandboxConfig", None)],
    "RunPodSandboxRequest": [("config", 1, "PodSandboxConfig", None), ("runtime_handler", 2, STRING, None)],
    "RunPodSandboxResponse": [("pod_sandbox_id", 1, STRING, None)],
    "StopPodSandboxRequest": [("pod_sandbox_id", 1, STRING, None)],
    "StopPodSandboxResponse": [],
    "RemovePodSandboxRequest": [("pod_sandbox_id", 1, STRING, None)],
    "RemovePodSandboxResponse": [],
    "PodSandboxStatusRequest": [("pod_sandbox_id", 1, STRING, None), ("verbose", 2, BOOL, None)],
    "PodIP": [("ip", 1, STRING, None)],
    "PodSandboxNetworkStatus": [("ip", 1, STRING, None), ("additional_ips", 2, "PodIP", REPEATED)],
    "PodSandboxStatus": [("id", 1, STRING, None), ("metadata", 2, "PodSandboxMetadata", None),
                         ("state", 3, "PodSandboxState", None), ("created_at", 4, INT64, None),
                         ("network", 5, "PodSandboxNetworkStatus", None), ("labels", 7, STRING, MAP),
                         ("annotations", 8, STRING, MAP), ("runtime_handler", 9, STRING, None)],
    "PodSandboxStatusResponse": [("status", 1, "PodSandboxStatus", None), ("info", 2, STRING, MAP)],
    "PodSandboxStateValue": [("state", 1, "PodSandboxState", None)],
    "PodSandboxFilter": [("id", 1, STRING, None), ("state", 2, "PodSandboxStateValue", None),
                         ("label_selector", 3, STRING, MAP)],
    "ListPodSandboxRequest": [("filter", 1, "PodSandboxFilter", None)],
    "PodSandbox": [("id", 1, STRING, None), ("metadata", 2, "PodSandboxMetadata", None),
                   ("state", 3, "PodSandboxState", None), ("created_at", 4, INT64, None),
                   ("labels", 5, STRING, MAP), ("annotations", 6, STRING, MAP),
                   ("runtime_handler", 7, STRING, None)],
    "ListPodSandboxResponse": [("items", 1, "PodSandbox", REPEATED)],
    "StatusRequest": [("verbose", 1, BOOL, None)],
    "RuntimeCondition": [("type", 1, STRING, None), ("status", 2, BOOL, None), ("reason", 3, STRING, None),
                         ("message", 4, STRING, None)],
    "RuntimeStatus": [("conditions", 1, "RuntimeCondition", REPEATED)],
    "StatusResponse": [("status", 1, "RuntimeStatus", None), ("info", 2, STRING, MAP)],
}
ENUMS = {
    "Protocol": [("TCP", 0), ("UDP", 1), ("SCTP", 2)],
    "PodSandboxState": [("SANDBOX_READY", 0), ("SANDBOX_NOTREADY", 1)],
}
# rpc name -> (request, response)
CALLS = {
    "Version": ("VersionRequest", "VersionResponse"),
    "Status": ("StatusRequest", "StatusResponse"),
    "RunPodSandbox": ("RunPodSandboxRequest", "RunPodSandboxResponse"),
    "StopPodSandbox": ("StopPodSandboxRequest", "StopPodSandboxResponse"),
    "RemovePodSandbox": ("RemovePodSandboxRequest", "RemovePodSandboxResponse"),
    "PodSandboxStatus": ("PodSandboxStatusRequest", "PodSandboxStatusResponse"),
    "ListPodSandbox": ("ListPodSandboxRequest", "ListPodSandboxResponse"),
}
SANDBOX_READY, SANDBOX_NOTREADY = 0, 1
PROTOCOLS = {"tcp": 0, "udp": 1, "sctp": 2}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="weft_lab_cri.proto", package=PACKAGE, syntax="proto3")
    for name, values in ENUMS.items():
        enum = proto.enum_type.add(name=name)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    for name, fields in MESSAGES.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind, flag in fields:
            field = message.field.add(name=field_name, number=number, json_name=_camel(field_name))
            field.label = _F.LABEL_REPEATED if flag in (REPEATED, MAP) else _F.LABEL_OPTIONAL
            if flag == MAP:  # map<string,string>: a repeated nested XxxEntry{key=1, value=2}
                entry_name = _camel(field_name, upper=True) + "Entry"
                entry = message.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=STRING, label=_F.LABEL_OPTIONAL, json_name="key")
                entry.field.add(name="value", number=2, type=STRING, label=_F.LABEL_OPTIONAL, json_name="value")
                field.type, field.type_name = _F.TYPE_MESSAGE, f".{PACKAGE}.{name}.{entry_name}"
            elif isinstance(kind, str):
                field.type = _F.TYPE_ENUM if kind in ENUMS else _F.TYPE_MESSAGE
                field.type_name = f".{PACKAGE}.{kind}"
            else:
                field.type = kind
    return proto


def _camel(name: str, upper: bool = False) -> str:
    head, *rest = name.split("_")
    return (head.capitalize() if upper else head) + "".join(part.capitalize() for part in rest)


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())
messages = {name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))
            for name in MESSAGES}


class RuntimeClient:
    """runtime.v1 RuntimeService on a unix socket.  grpc.RpcError propagates; its
    .details() is the runtime's error text (e.g. the CNI plugin's message)."""

    def __init__(self, socket_path: str, timeout: float = CALL_TIMEOUT):
        self.socket_path = socket_path
        self.timeout = timeout
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self._calls = {
            name: self.channel.unary_unary(SERVICE + name,
                                           request_serializer=messages[req].SerializeToString,
                                           response_deserializer=messages[resp].FromString)
            for name, (req, resp) in CALLS.items()}

    def call(self, name: str, timeout: float = None, **fields):
        request = messages[CALLS[name][0]](**fields)
        return self._calls[name](request, timeout=timeout or self.timeout)

    def version(self):
        return self.call("Version", version="v1")

    def conditions(self) -> dict:
        """The runtime's Status conditions: {type: (status, reason, message)}, e.g.
        "NetworkReady" (false while the CNI plugin's STATUS fails, on runtimes that ask)."""
        return {c.type: (c.status, c.reason, c.message) for c in self.call("Status").status.conditions}

    def sandbox_config(self, name: str, uid: str, namespace: str = "default", port_mappings=(),
                       cgroup_parent: str = "", annotations=None, labels=None, hostname: str = ""):
        """A PodSandboxConfig message; port_mappings: (protocol, container_port, host_port)."""
        mappings = [messages["PortMapping"](protocol=PROTOCOLS[proto], container_port=inner, host_port=outer)
                    for proto, inner, outer in port_mappings]
        return messages["PodSandboxConfig"](
            metadata=messages["PodSandboxMetadata"](name=name, uid=uid, namespace=namespace, attempt=0),
            hostname=hostname or name[:63], port_mappings=mappings, labels=labels or {},
            annotations=annotations or {},
            linux=messages["LinuxPodSandboxConfig"](cgroup_parent=cgroup_parent))

    def run_pod_sandbox(self, config, runtime_handler: str = "") -> str:
        return self.call("RunPodSandbox", config=config, runtime_handler=runtime_handler).pod_sandbox_id

    def pod_sandbox_status(self, sandbox_id: str):
        """The PodSandboxStatus message (state, network.ip, ...)."""
        return self.call("PodSandboxStatus", pod_sandbox_id=sandbox_id).status

    def stop_pod_sandbox(self, sandbox_id: str):
        self.call("StopPodSandbox", pod_sandbox_id=sandbox_id)

    def remove_pod_sandbox(self, sandbox_id: str):
        self.call("RemovePodSandbox", pod_sandbox_id=sandbox_id)

    def list_pod_sandbox(self, labels=None) -> list:
        request_filter = messages["PodSandboxFilter"](label_selector=labels or {})
        return list(self.call("ListPodSandbox", filter=request_filter).items)

    def close(self):
        self.channel.close()


def main(argv=None) -> int:
    """python -m lab.cri SOCKET version | ls | status ID | rm ID
                     | run NAME [--handler H] [--port tcp:8080:30080] [--cgroup-parent P]"""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m lab.cri", description="a few CRI RuntimeService calls")
    parser.add_argument("socket")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("version")
    commands.add_parser("ls")
    for name in ("status", "rm"):
        commands.add_parser(name).add_argument("id")
    run = commands.add_parser("run")
    run.add_argument("name")
    run.add_argument("--handler", default="", help="runtime handler (default: containerd's default)")
    run.add_argument("--port", action="append", default=[], metavar="PROTO:PORT:HOSTPORT")
    run.add_argument("--cgroup-parent", default="")
    args = parser.parse_args(argv)
    client = RuntimeClient(args.socket)
    try:
        if args.command == "version":
            reply = client.version()
            print(reply.runtime_name, reply.runtime_version, "CRI", reply.runtime_api_version)
        elif args.command == "ls":
            for sandbox in client.list_pod_sandbox():
                state = "READY" if sandbox.state == SANDBOX_READY else "NOTREADY"
                print(sandbox.id, state, f"{sandbox.metadata.namespace}/{sandbox.metadata.name}",
                      sandbox.runtime_handler or "(default)")
        elif args.command == "run":
            mappings = [(proto, int(inner), int(outer))
                        for proto, inner, outer in (m.split(":") for m in args.port)]
            config = client.sandbox_config(args.name, f"uid-{args.name}", port_mappings=mappings,
                                           cgroup_parent=args.cgroup_parent)
            print(client.run_pod_sandbox(config, args.handler))
        elif args.command == "status":
            status = client.pod_sandbox_status(args.id)
            print(json.dumps({"id": status.id, "ready": status.state == SANDBOX_READY,
                              "ip": status.network.ip, "handler": status.runtime_handler}))
        else:
            client.stop_pod_sandbox(args.id)
            client.remove_pod_sandbox(args.id)
    except grpc.RpcError as exc:
        print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
