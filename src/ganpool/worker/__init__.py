from ganpool.worker.progress import WorkerProgress
from ganpool.worker.worker import Worker

__all__ = ["Worker", "WorkerProgress"]
