"""Bandit rewards from ``POST /v1/feedback``: applied to this gateway's router at once, and
queued for the registry, which sums them over every gateway; the registry poller flushes the
queue and reads the summed evidence back."""

from __future__ import annotations

from registry import Registry
from serving.routing_table import RoutingTable

Arms = dict[int, tuple[float, float]]  # arm version -> (reward sum, pulls)


class BanditRewards:
    """Rewards recorded since the last flush, per (model, bandit)."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str], Arms] = {}

    def record(
        self, table: RoutingTable, model: str, bandit: str, version: int, reward: float
    ) -> None:
        """One reward for a bandit arm: into the model's router now, and queued."""
        router = table.routers.get(model)
        if router is not None and router.policy.bandit and router.policy.bandit.id == bandit:
            rewards, pulls = router.evidence.get(version, (0.0, 0.0))
            router.evidence[version] = (rewards + reward, pulls + 1)
        arms = self.pending.setdefault((model, bandit), {})
        rewards, pulls = arms.get(version, (0.0, 0.0))
        arms[version] = (rewards + reward, pulls + 1)

    def flush(self, registry: Registry, table: RoutingTable) -> None:
        """Send the queued rewards; refresh routers from every gateway's evidence (blocking)."""
        pending, self.pending = self.pending, {}
        for (model, bandit), arms in pending.items():
            registry.record_rewards(model, bandit, arms)
        if not any(r.policy.bandit for r in table.routers.values()):
            return
        evidence = registry.bandit_stats()
        for model, router in table.routers.items():
            if router.policy.bandit is not None:
                router.evidence = dict(evidence.get((model, router.policy.bandit.id), {}))
