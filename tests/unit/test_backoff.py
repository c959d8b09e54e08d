"""agent/runtime.Backoff: doubling delays, a cap, reset, and the jitter the Kubernetes
watch uses (no clock involved: the delays are only computed)."""

from cni_plugin.agent.runtime import Backoff


def test_without_jitter_the_delays_double_up_to_the_cap_and_reset():
    backoff = Backoff(0.1, 1.0)
    assert [round(backoff.next(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.1


def test_jitter_stays_within_its_share_of_each_nominal_delay():
    nominal = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    drawn = []
    for _ in range(200):
        backoff = Backoff(0.1, 5.0, jitter=0.2)
        delays = [backoff.next() for _ in nominal]
        assert all(0.8 * n <= d <= 1.2 * n for d, n in zip(delays, nominal)), delays
        drawn.append(delays[0])
    assert len(set(drawn)) > 100  # really drawn, not a fixed factor
