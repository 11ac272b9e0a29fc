/**
 * Admission of jobs on this machine: a job starts only when its pipeline is
 * under its parallelism and the machine has the cores, memory and GPUs it
 * asks for left. Waiting jobs are considered in arrival order; a smaller job
 * may start while a larger one waits for room.
 *
 * A sweep queues every job at once (up to 100,000), and every job of one
 * pipeline asks for the same: waiters are kept in one first-in-first-out
 * queue per group and demand, and only the heads of those few queues are
 * looked at when room frees up, so starting a job costs the same whatever
 * the length of the queue.
 */
import { KaosError } from "../../core/errors.js";
import { formatBytes, plural } from "../../core/format.js";

export interface Capacity {
  cpu: number;
  memoryBytes: number;
  /** Indexes of the GPUs kaos may hand out (CUDA_VISIBLE_DEVICES values). */
  gpus: number[];
}

export interface Demand {
  cpu: number;
  memoryBytes: number;
  gpu: number;
  /** Jobs of one group (a pipeline) run at most `groupLimit` at once. */
  group: string;
  groupLimit: number;
}

export interface Lease {
  gpus: number[];
  release(): void;
}

interface Waiter {
  demand: Demand;
  /** Arrival order, across queues. */
  seq: number;
  /** Set when its signal aborted: it is dropped once it reaches the head of its queue. */
  gone: boolean;
  grant: (lease: Lease) => void;
}

/** Waiters of one group and demand, first in first out, taken from the head without moving the rest. */
class WaiterQueue {
  private items: Waiter[] = [];
  private head = 0;

  push(waiter: Waiter): void {
    this.items.push(waiter);
  }

  /** The oldest waiter still waiting, dropping those that gave up. */
  peek(): Waiter | undefined {
    while (this.head < this.items.length && this.items[this.head]!.gone) this.head += 1;
    this.compact();
    return this.items[this.head];
  }

  shift(): void {
    this.head += 1;
    this.compact();
  }

  private compact(): void {
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }
}

export class ResourcePool {
  private cpuFree: number;
  private memoryFree: number;
  private readonly gpusFree: number[];
  private readonly running = new Map<string, number>();
  /** One queue per group and demand, by a key of both. */
  private readonly queues = new Map<string, WaiterQueue>();
  private arrivals = 0;

  constructor(readonly capacity: Capacity) {
    this.cpuFree = capacity.cpu;
    this.memoryFree = capacity.memoryBytes;
    this.gpusFree = [...capacity.gpus];
  }

  /** Why `demand` can never be met on this machine, or undefined when it can. */
  unsatisfiable(demand: Omit<Demand, "group" | "groupLimit">): string | undefined {
    if (demand.cpu > this.capacity.cpu + 1e-9)
      return `asks for ${plural(demand.cpu, "core")}, this machine gives kaos ${this.capacity.cpu}`;
    if (demand.memoryBytes > this.capacity.memoryBytes) {
      return `asks for ${formatBytes(demand.memoryBytes)} of memory, this machine gives kaos ${formatBytes(this.capacity.memoryBytes)}`;
    }
    if (demand.gpu > this.capacity.gpus.length)
      return `asks for ${plural(demand.gpu, "GPU")}, this machine has ${this.capacity.gpus.length}`;
    return undefined;
  }

  /**
   * When the machine alone holds fewer jobs of `demand` at once than its
   * group's limit: how many, why, and what to change. A parallelism the
   * cores, memory or GPUs cannot reach is otherwise seen only as jobs that
   * wait.
   */
  narrowerThanLimit(demand: Demand): { jobs: number; why: string; fix: string } | undefined {
    const bounds: { jobs: number; why: string; fix: string }[] = [
      {
        jobs: Math.floor((this.capacity.cpu + 1e-9) / demand.cpu),
        why: `each asks for ${plural(demand.cpu, "core")}, and this machine gives kaos ${this.capacity.cpu}`,
        fix: "lower the pipeline's resources.cpu, or raise maxCpu in the stack",
      },
    ];
    if (demand.memoryBytes > 0) {
      bounds.push({
        jobs: Math.floor(this.capacity.memoryBytes / demand.memoryBytes),
        why: `each asks for ${formatBytes(demand.memoryBytes)} of memory, and this machine gives kaos ${formatBytes(this.capacity.memoryBytes)}`,
        fix: "lower the pipeline's resources.memory, or raise maxMemory in the stack",
      });
    }
    if (demand.gpu > 0) {
      bounds.push({
        jobs: Math.floor(this.capacity.gpus.length / demand.gpu),
        why: `each asks for ${plural(demand.gpu, "GPU")}, and this machine has ${this.capacity.gpus.length}`,
        fix: "lower the pipeline's resources.gpu, or use a cluster stack with GPU nodes",
      });
    }
    const tightest = bounds.reduce((least, bound) => (bound.jobs < least.jobs ? bound : least));
    return tightest.jobs < demand.groupLimit ? tightest : undefined;
  }

  acquire(demand: Demand, signal?: AbortSignal): Promise<Lease> {
    const impossible = this.unsatisfiable(demand);
    if (impossible) return Promise.reject(new KaosError("RESOURCES_UNSATISFIABLE", impossible));
    // An aborted signal fires no more: waiting would never end.
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise((grant, reject) => {
      const waiter: Waiter = { demand, seq: this.arrivals++, gone: false, grant };
      const key = JSON.stringify([demand.group, demand.groupLimit, demand.cpu, demand.memoryBytes, demand.gpu]);
      let queue = this.queues.get(key);
      if (queue === undefined) {
        queue = new WaiterQueue();
        this.queues.set(key, queue);
      }
      queue.push(waiter);
      const onAbort = () => {
        waiter.gone = true;
        reject(signal?.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      waiter.grant = (lease) => {
        signal?.removeEventListener("abort", onAbort);
        grant(lease);
      };
      this.dispatch();
    });
  }

  private fits(demand: Demand): boolean {
    return (
      (this.running.get(demand.group) ?? 0) < demand.groupLimit &&
      demand.cpu <= this.cpuFree + 1e-9 &&
      demand.memoryBytes <= this.memoryFree &&
      demand.gpu <= this.gpusFree.length
    );
  }

  /**
   * Starts waiters while any fits, oldest first. Within a queue every waiter
   * asks for the same, so when its head does not fit none of it does; and
   * room only shrinks while this runs, so a head passed over stays so.
   */
  private dispatch(): void {
    for (;;) {
      let next: { queue: WaiterQueue; waiter: Waiter } | undefined;
      for (const queue of this.queues.values()) {
        const waiter = queue.peek();
        if (waiter !== undefined && (next === undefined || waiter.seq < next.waiter.seq) && this.fits(waiter.demand)) {
          next = { queue, waiter };
        }
      }
      if (next === undefined) return;
      const { queue, waiter } = next;
      queue.shift();
      const { demand } = waiter;
      this.cpuFree -= demand.cpu;
      this.memoryFree -= demand.memoryBytes;
      this.running.set(demand.group, (this.running.get(demand.group) ?? 0) + 1);
      const gpus = this.gpusFree.splice(0, demand.gpu);
      let released = false;
      waiter.grant({
        gpus,
        release: () => {
          if (released) return;
          released = true;
          this.cpuFree += demand.cpu;
          this.memoryFree += demand.memoryBytes;
          this.running.set(demand.group, (this.running.get(demand.group) ?? 1) - 1);
          this.gpusFree.push(...gpus);
          this.gpusFree.sort((a, b) => a - b);
          this.dispatch();
        },
      });
    }
  }
}
