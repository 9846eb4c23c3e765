"""One run as a gang of processes on Ray: `resources.hosts: H` processes, one per host, one JAX job.

A placement group holds one bundle per process (cpus/gpus/tpus of one host); one Ray actor per
bundle is one process of the job. Process 0 picks a free port on its node and the others learn the
coordinator address from it through an ObjectRef, so nothing blocks the driver while the group
waits for machines. Every process then runs `execute_run` (scaling/run/train.py): process 0 holds the
lease and writes the run's files, each feeds its own rows of the batch, all save checkpoints
together.

A gang lives or dies whole: when any process dies (its actor, its node), the others would wait in
a collective forever, so all are killed, the placement group is removed, and after `restarts`
restarts at most the gang is started again, resuming from the last checkpoint. A failure in our
own code (an exception, recorded in the run's status) is not restarted here; the scheduler's
`retries` apply as for any run.

The strategy: STRICT_SPREAD (one process per node) when the cluster has a node for each process,
PACK otherwise (a local test, a node whose accelerators a bundle only partly takes);
MEDSCALE_GANG_PLACEMENT overrides it. On TPU a gang is one whole multi-host slice: every bundle also
asks for the slice's name (a resource each of its hosts has, one unit), so all processes land on the
hosts of one slice of `hosts` hosts, and JAX reads coordinator and process ids from the slice itself.
"""
from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

from medscale.atomic import write_json
from medscale.scaling.errors import UserError
from medscale.scaling.run.distributed import free_coordinator_port, join_gang
from medscale.scaling.run.runtime import configure_process, process_shape
from medscale.scaling.sweep.store import RunDir

PLACEMENT_ENV = "MEDSCALE_GANG_PLACEMENT"
STRATEGIES = ("STRICT_SPREAD", "SPREAD", "PACK", "STRICT_PACK")
SETTLE_S = 5.0  # after one process fails, how long the others get to report how they ended
TEARDOWN_S = 30.0
_SLICE_HEAD = re.compile(r"^TPU-.+-head$")  # the resource Ray gives worker 0 of a TPU slice


class GangMember:
    """One process of a gang (a Ray actor in its own worker process)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def where(self) -> dict:
        import ray  # Ray is imported where used: about 1 s, and the CLI's fast paths import this module

        return {"rank": self.rank, "host": socket.gethostname(), "ip": ray.util.get_node_ip_address(),
                "pid": os.getpid()}

    def coordinator(self) -> str:
        """host:port for jax.distributed, a port free on this node now (rank 0 only; free_coordinator_port)."""
        import ray

        return f"{ray.util.get_node_ip_address()}:{free_coordinator_port()}"

    def train(self, run_path: str, coordinator: str, hosts: int, attempt: int, cpus: int, host_devices: int | None,
              stale_after: float, on_accelerator: bool, tpu_slice: str | None = None) -> str:
        started = time.time()
        run = RunDir(Path(run_path))
        write_json(run.path / "gang" / f"rank{self.rank}.json",
                   {**self.where(), "coordinator": coordinator, "hosts": hosts, "attempt": attempt, "at": started})
        # host_devices before JAX starts; the distributed runtime before any JAX computation
        configure_process(cores=None if on_accelerator else cpus,
                          host_devices=process_shape(cpus, host_devices, on_accelerator)[1], start_backend=False)
        if tpu_slice:  # the slice's own metadata names the coordinator and each host's process id
            from medscale.models.sharding import initialize_distributed  # JAX, so imported after configure_process

            initialize_distributed()
        else:
            join_gang(coordinator, hosts, self.rank, cpu=not on_accelerator)
        from medscale.scaling.run.train import execute_run  # JAX too

        return execute_run(run, stale_after=stale_after, process_started=started)


def placement_strategy(hosts: int, bundle: dict) -> str:
    """STRICT_SPREAD if enough alive nodes could each hold a bundle, else PACK (or the env's choice)."""
    import ray

    chosen = os.environ.get(PLACEMENT_ENV, "").upper()
    if chosen:
        if chosen not in STRATEGIES:
            raise ValueError(f"{PLACEMENT_ENV}={chosen!r}: use one of {STRATEGIES}")
        return chosen
    fitting = [n for n in ray.nodes() if n.get("Alive")
               and all(n.get("Resources", {}).get(k, 0) >= v for k, v in bundle.items() if v)]
    return "STRICT_SPREAD" if len(fitting) >= hosts else "PACK"


def tpu_slice_for(hosts: int) -> str:
    """The name of a TPU slice of exactly `hosts` hosts, preferring one whose hosts are all free."""
    import ray
    from ray.util import tpu
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def describe() -> tuple[str, int]:
        return tpu.get_current_pod_name(), tpu.get_current_pod_worker_count()

    heads = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and any(map(_SLICE_HEAD.match, n["Resources"]))]
    slices = ray.get([describe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
                      for node in heads])
    fitting = sorted(name for name, count in slices if count == hosts and name)
    if not fitting:
        raise UserError(f"resources.hosts is {hosts} with tpus: no TPU slice of {hosts} hosts in the Ray cluster "
                        f"(slices: {sorted(slices)}); set hosts to the host count of a slice (v4-32: 4)")
    free = ray.available_resources()
    return max(fitting, key=lambda name: free.get(name, 0) >= hosts)


def _died(err: BaseException) -> bool:
    """A process (or its node) died, as opposed to our code raising in it."""
    import ray.exceptions as rex

    return isinstance(err, (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError,
                            rex.LocalRayletDiedError, rex.OwnerDiedError, rex.ActorPlacementGroupRemoved))


class GangRun:
    """A gang run as the scheduler drives it: `refs` to wait on, `resolve` when one is ready.

    `resolve` returns the run's state once the gang has ended for good, or None while it runs on
    (possibly restarted, with new `refs`).
    """

    def __init__(self, run: RunDir, *, hosts: int, cpus: int, gpus: float = 0, tpus: int = 0,
                 host_devices: int | None = None, stale_after: float, restarts: int = 3,
                 runtime_env: dict | None = None) -> None:
        self.run, self.hosts, self.cpus, self.gpus, self.tpus = run, hosts, cpus, gpus, tpus
        self.host_devices, self.stale_after = host_devices, stale_after
        self.restarts, self.runtime_env = restarts, runtime_env
        self.attempt = 0
        self.restarted = 0
        self._start()

    # lifecycle
    def _start(self) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {}),
                  **({"TPU": self.tpus} if self.tpus else {})}
        self.strategy = placement_strategy(self.hosts, bundle)
        self.tpu_slice = tpu_slice_for(self.hosts) if self.tpus else None
        if self.tpu_slice:
            bundle[self.tpu_slice] = 1
        self.pg = placement_group([dict(bundle) for _ in range(self.hosts)], strategy=self.strategy)
        actor = ray.remote(max_restarts=0)(GangMember)
        self.members = [actor.options(
            num_cpus=self.cpus, num_gpus=self.gpus,
            resources={"TPU": self.tpus, self.tpu_slice: 1} if self.tpus else None,
            runtime_env=self.runtime_env,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=rank),
        ).remote(rank) for rank in range(self.hosts)]
        # where each process is: whichever holds the lease (JAX's process 0), it is cleared after a death
        self.places = [m.where.remote() for m in self.members]
        coordinator = self.members[0].coordinator.remote()
        self.refs = [m.train.remote(str(self.run.path.absolute()), coordinator, self.hosts, self.attempt, self.cpus,
                                    self.host_devices, self.stale_after, bool(self.gpus or self.tpus),
                                    self.tpu_slice)
                     for m in self.members]
        self.results: dict = {}

    def teardown(self) -> None:
        """Kill every process, wait until they are gone, free the bundles, drop a dead leader's lease."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for member in self.members:
            ray.kill(member, no_restart=True)
        ray.wait(self.refs, num_returns=len(self.refs), timeout=TEARDOWN_S)
        remove_placement_group(self.pg)
        ready, _ = ray.wait(self.places, num_returns=len(self.places), timeout=0)
        places = []
        for ref in ready:
            try:
                places.append(ray.get(ref))
            except Exception:  # noqa: BLE001 - never started: it holds no lease
                pass
        info = self.run.lease_info() or {}
        if any(info.get("host") == p["host"] and info.get("pid") == p["pid"] for p in places):
            self.run.lease_path.unlink(missing_ok=True)  # its holder is dead: no need to wait it out

    # driving
    def resolve(self, ref) -> str | None:
        import ray

        try:
            self.results[ref] = ray.get(ref)
        except Exception as err:  # noqa: BLE001 - any failure ends this attempt of the gang
            return self._failed(err)
        if len(self.results) < len(self.refs):
            return None
        self.teardown()
        return self.results[self.refs[0]]

    def _failed(self, first: BaseException) -> str | None:
        import ray

        errors = [first]
        others = [r for r in self.refs if r not in self.results]
        # an exception in one process may be the echo of another's death (a broken collective): look
        ready, _ = ray.wait(others, num_returns=len(others), timeout=0 if _died(first) else SETTLE_S)
        for r in ready:
            try:
                ray.get(r)
            except Exception as err:  # noqa: BLE001
                errors.append(err)
        died = any(_died(e) for e in errors)
        self.teardown()
        if died and self.restarted < self.restarts:
            self.restarted += 1
            self.attempt += 1
            self._start()
            return None
        status = self.run.status()
        if status["state"] not in ("failed", "done", "diverged"):
            cause = "a process of the gang died" if died else "a process of the gang failed"
            self.run.set_status("failed", error=f"{cause} ({self.restarted} restarts): {str(first)[-2000:]}")
        return "failed"
