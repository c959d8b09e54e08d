"""LiveVerdict (pure): per-event updates give exactly validation.validate's verdict."""

import json
import random

from cni_plugin.subnet import validation
from cni_plugin.subnet.lease import NetworkConfig
from cni_plugin.subnet.live_verdict import LiveVerdict

CONFIG = NetworkConfig.parse("weft", json.dumps({"Network": "10.244.0.0/16", "EnableIPv6": True,
                                                "IPv6Network": "fd00:10:244::/48", "Backend": {"VNI": 1}}))
KEYS = [f"10.244.{i}.0-24" for i in range(1, 9)] + ["10.244.9.0-26", "10.245.1.0-24", "not-a-key"]


def value(rng, index):
    raw = {"PublicIP": rng.choice(["192.168.100.1", "192.168.100.2", "127.0.0.1"]), "NodeName": f"n{index}",
           "BackendType": "vxlan", "BackendData": {"VNI": 1, "VtepMAC": f"02:00:00:00:00:{index % 256:02x}"}}
    if rng.random() < 0.4:  # IPv6 subnets collide often: overlaps across keys
        raw["IPv6Subnet"] = f"fd00:10:244:{rng.randrange(3)}::/64"
    if rng.random() < 0.05:
        return "{not json"
    return json.dumps(raw)


def judged(verdict):
    return dict(verdict.valid), {k: (r.reason, r.detail) for k, r in verdict.refused.items()}


def test_every_event_sequence_matches_a_full_validation():
    rng = random.Random(17)
    for trial in range(150):
        revision = 1
        rows = {}
        for key in rng.sample(KEYS, rng.randrange(len(KEYS))):
            revision += 1
            rows[key] = (key, value(rng, revision), 0, revision)
        live = LiveVerdict(CONFIG, rows.values())
        assert judged(live.verdict) == judged(validation.validate(CONFIG, rows.values())), trial
        for step in range(40):
            key = rng.choice(KEYS)
            revision += 1
            if rng.random() < 0.6:
                created = rows[key][3] if key in rows else revision
                rows[key] = (key, value(rng, revision), 0, created)
                changed = live.apply("put", key, rows[key][1], created)
            else:
                rows.pop(key, None)
                changed = live.apply("delete", key)
            want = validation.validate(CONFIG, rows.values())
            assert judged(live.verdict) == judged(want), (trial, step, key)
            assert changed is None or changed == {key}


def test_quiet_events_stay_incremental():
    rows = [(f"10.244.{i}.0-24", json.dumps({"PublicIP": "192.168.100.1", "NodeName": f"n{i}",
                                             "BackendData": {"VNI": 1, "VtepMAC": "02:00:00:00:00:01"}}), 0, i)
            for i in range(1, 50)]
    live = LiveVerdict(CONFIG, rows)
    assert len(live.valid) == 49 and live.refused == {}
    fresh = json.dumps({"PublicIP": "192.168.100.9", "NodeName": "new",
                        "BackendData": {"VNI": 1, "VtepMAC": "02:00:00:00:00:09"}})
    assert live.apply("put", "10.244.100.0-24", fresh, 100) == {"10.244.100.0-24"}
    assert live.apply("delete", "10.244.1.0-24") == {"10.244.1.0-24"}
    assert live.apply("put", "10.244.3.0-26", fresh, 101) == {"10.244.3.0-26"}  # refused alone
    assert live.refused["10.244.3.0-26"].reason == validation.SUBNET_LENGTH
    assert live.apply("put", "10.244.2.0-24", fresh, 2) == {"10.244.2.0-24"}  # a rewrite stays incremental
    assert live.valid["10.244.2.0-24"].node_name == "new"
    # a lease on an IPv6 subnet another lease holds: oldest wins, judged as a whole
    v6 = json.loads(fresh)
    v6["IPv6Subnet"] = "fd00:10:244:5::/64"
    assert live.apply("put", "10.244.4.0-24", json.dumps(v6), 4) == {"10.244.4.0-24"}
    assert live.apply("put", "10.244.5.0-24", json.dumps(v6), 5) is None
    assert live.refused["10.244.5.0-24"].reason == validation.OVERLAP
