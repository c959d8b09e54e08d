"""NetworkPolicy semantics (networking.k8s.io/v1), pure logic: no kernel, no etcd.

objects.py    Pod, Namespace and NetworkPolicy parsed from Kubernetes objects, every
              field validated (errors name the field path, nothing partial is kept)
selectors.py  label selectors: matchLabels and matchExpressions
verdict.py    may this flow pass? (policy types, isolation, the union of policies,
              peers, ports and endPort ranges, named ports) and which policies say so

Enforcement (nftables) and the object sources (etcd, the Kubernetes API) build on this
model; `weftctl policy explain` prints its verdicts.
"""
