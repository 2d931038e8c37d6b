from ganpool.coordinator.coordinator import Coordinator

__all__ = ["Coordinator"]
