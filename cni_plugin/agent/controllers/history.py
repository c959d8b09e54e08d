"""The history controller: this node's weft-ipam history published to etcd (for
`weftctl whois --cluster`), after every sync and at every reconcile interval.  Not
while the network waits for etcd: the journal keeps its offset until etcd is back."""

from ...subnet.registry import RegistryError
from ..history_publisher import HistoryPublisher
from ..runtime import Controller
from . import register


@register
class HistoryController(Controller):
    name = "history"
    order = 30

    def __init__(self, agent):
        super().__init__(agent)
        self.publisher = None

    def prepare(self):
        if self.publisher is None:
            agent, options = self.agent, self.agent.options
            self.publisher = HistoryPublisher(agent.registry, options.ipam_data_dir, options.state_dir,
                                              agent.node.name, options.history_retention, agent.log)

    def publish(self):
        agent = self.agent
        if self.publisher is None:
            return
        try:
            self.publisher.publish(agent.name)
        except RegistryError as exc:  # an outage: the journal waits at its offset
            agent.metrics.etcd_errors.labels(agent.name).inc()
            agent.log.warning("history not published", extra=agent.extra(error=exc))

    def sync(self, raw):
        self.publish()

    def timers(self):
        return [(self.agent.options.reconcile_interval, self.publish)]
