"""Publishes this node's weft-ipam history to etcd so `weftctl whois --cluster` sees
every node.  Reads the journal from where it stopped last time (offset kept in the
state dir) and drops records older than the retention from etcd."""

import json
import os
import time
from datetime import timedelta

from ..fsutil import write_atomic
from ..timestamps import format_ts, now

PRUNE_EVERY = 300.0  # seconds between retention sweeps


class HistoryPublisher:
    def __init__(self, registry, ipam_data_dir, state_dir, node_name, retention_hours, log):
        self.registry = registry
        self.ipam_data_dir = ipam_data_dir
        self.state_dir = state_dir
        self.node_name = node_name
        self.retention = timedelta(hours=retention_hours)
        self.log = log
        self.last_prune = {}

    def _offset_path(self, network):
        return os.path.join(self.state_dir, network, "history.offset")

    def _offset(self, network) -> int:
        try:
            with open(self._offset_path(network)) as handle:
                return int(handle.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _save_offset(self, network, offset):
        # not durable: an offset lost in a crash only uploads records again (idempotent)
        write_atomic(self._offset_path(network), str(offset), mode=0o644, durable=False, make_dirs=True)

    def _new_records(self, network):
        path = os.path.join(self.ipam_data_dir, network, "history.jsonl")
        offset = self._offset(network)
        try:
            with open(path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size < offset:
                    offset = 0  # the journal was replaced: start over
                handle.seek(offset)
                data = handle.read()
        except OSError:
            return [], offset
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits
        records = []
        for line in complete.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append({**record, "node": self.node_name})
        return records, offset + len(complete)

    def publish(self, network) -> int:
        """Push new records; returns how many.  etcd errors propagate (caller counts them)."""
        records, offset = self._new_records(network)
        if records:
            self.registry.put_history(network, self.node_name, records)
        if records or offset != self._offset(network):
            self._save_offset(network, offset)
        moment = time.monotonic()
        if moment - self.last_prune.get(network, 0) > PRUNE_EVERY:
            self.registry.delete_history_before(network, format_ts(now() - self.retention))
            self.last_prune[network] = moment
        return len(records)
