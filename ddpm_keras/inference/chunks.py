"""`ChunkPlan`: which chunks of a large sampling request this process runs, on which device, and how they come together.

`generate_images(n, batch_size=b)` runs `ceil(n / b)` independent chunks,
chunk `k` seeded from `(seed, k)` (`runner.chunk_seeds`). Chunk `k` goes
to replica `k % R` of the `R` replicas of the `tf.distribute` strategy a
model was built under, each replica a device
(`MirroredStrategy`: this machine's GPUs) of a worker
(`MultiWorkerMirroredStrategy`: the processes of the run). This process
runs its replicas' chunks, one thread per local device, and the workers
then exchange their images with one all-gather. On JAX, with a
`keras.distribution` over several processes, each process is a replica
and runs its chunks with its own copy of the weights; the images are
exchanged with `jax.experimental.multihost_utils.process_allgather`.

So `R` replicas make an evaluation set in about `1 / R` of the time, and
the images are the same, in the same order, as one process makes with
the same `seed` and `batch_size`. Every process of a multi-process run must
make the same call, as with `fit`; a request of fewer chunks than workers
runs whole on every process, with no exchange.
"""

import contextlib
import threading

import keras
import numpy as np

from ddpm_keras.utils.distribute import worker_of


class ChunkPlan:
    """The replicas a request's chunks are dealt to, and this process's part of them.

    Args:
        num_chunks: Integer, the chunks of the request.
        strategy: The model's `tf.distribute.Strategy` (TensorFlow), or
            `None`: on JAX the processes of the current `keras.distribution`,
            elsewhere one replica.
    """

    def __init__(self, num_chunks, strategy=None):
        self.num_chunks = num_chunks
        self.strategy = strategy
        self.devices, self.first_replica, self.num_replicas, self.num_workers = _replicas(strategy)
        if num_chunks < self.num_workers:
            # Too few chunks to deal to every worker: each process runs them all, with no exchange.
            self.devices, self.first_replica, self.num_replicas, self.num_workers = [None], 0, 1, 1

    @property
    def num_local_chunks(self):
        """How many chunks this process runs."""
        return sum(len(self.chunks_of(index)) for index in range(len(self.devices)))

    def chunks_of(self, local_replica):
        """The chunks the `local_replica`-th replica of this process runs, in order."""
        return list(range(self.first_replica + local_replica, self.num_chunks, self.num_replicas))

    def run(self, run_chunk):
        """`[run_chunk(k) for every chunk k]`, each chunk run on its replica's device, gathered across workers.

        `run_chunk(k)` returns a tuple of NumPy arrays; the result is a list
        of those tuples in chunk order.
        """
        local = self._run_local(run_chunk)
        if self.num_workers == 1:
            return [local[k] for k in range(self.num_chunks)]
        return self._gather(local)

    def _run_local(self, run_chunk):
        """This process's chunks by index, one thread per local device (the chain releases the GIL while it runs)."""
        local, errors = {}, []

        def work(index, device):
            try:
                for k in self.chunks_of(index):
                    with _device_scope(device):
                        local[k] = run_chunk(k)
            except Exception as error:  # noqa: BLE001 - re-raised in the calling thread
                errors.append(error)

        threads = [threading.Thread(target=work, args=(i, device)) for i, device in enumerate(self.devices)]
        if len(threads) == 1:
            work(0, self.devices[0])
        else:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        if errors:
            raise errors[0]
        return local

    def _gather(self, local):
        """Every chunk in order, from each worker's `local` chunks, with one all-gather per output."""
        per_replica = -(-self.num_chunks // self.num_replicas)
        template = next(iter(local.values()))
        outputs = []
        for position, example in enumerate(template):
            blocks = np.zeros((len(self.devices), per_replica) + example.shape, np.float32)
            for index in range(len(self.devices)):
                for slot, k in enumerate(self.chunks_of(index)):
                    blocks[index, slot] = local[k][position]
            outputs.append(_all_gather(self.strategy, blocks, self.first_replica))  # (replicas, per_replica, ...)
        return [tuple(o[k % self.num_replicas, k // self.num_replicas] for o in outputs) for k in range(self.num_chunks)]


def _replicas(strategy):
    """`(local devices, global index of the first local replica, replicas, workers)` for `strategy`."""
    if keras.backend.backend() == "tensorflow" and strategy is not None and strategy.num_replicas_in_sync > 1:
        devices = list(strategy.extended.worker_devices)
        worker, workers = worker_of(strategy)
        return devices, worker * len(devices), strategy.num_replicas_in_sync, workers
    if keras.backend.backend() == "jax" and keras.distribution.distribution() is not None:
        import jax

        if jax.process_count() > 1:
            return [None], jax.process_index(), jax.process_count(), jax.process_count()
    return [None], 0, 1, 1


def _device_scope(device):
    if device is None:
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.device(device)


def _all_gather(strategy, blocks, first_replica):
    """Each replica's `blocks[i]` from every worker, stacked in replica order: `(replicas,) + blocks.shape[1:]`."""
    if keras.backend.backend() == "jax":
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(blocks, tiled=True))
    import tensorflow as tf

    values = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(blocks[context.replica_id_in_sync_group - first_replica][None])
    )
    return strategy.gather(values, axis=0).numpy()
