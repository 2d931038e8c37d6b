from ganpool.worker.worker import Worker, WorkerProgress

__all__ = ["Worker", "WorkerProgress"]
