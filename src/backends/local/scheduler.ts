/**
 * Admission of jobs on this machine: a job starts only when its pipeline is
 * under its parallelism and the machine has the cores, memory and GPUs it
 * asks for left. Waiting jobs are considered in arrival order; a smaller job
 * may start while a larger one waits for room.
 */
import { KaosError } from "../../core/errors.js";
import { formatBytes } from "../../core/format.js";

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
  grant: (lease: Lease) => void;
  reject: (error: unknown) => void;
}

export class ResourcePool {
  private cpuFree: number;
  private memoryFree: number;
  private readonly gpusFree: number[];
  private readonly running = new Map<string, number>();
  private readonly waiting: Waiter[] = [];

  constructor(readonly capacity: Capacity) {
    this.cpuFree = capacity.cpu;
    this.memoryFree = capacity.memoryBytes;
    this.gpusFree = [...capacity.gpus];
  }

  /** Why `demand` can never be met on this machine, or undefined when it can. */
  unsatisfiable(demand: Omit<Demand, "group" | "groupLimit">): string | undefined {
    if (demand.cpu > this.capacity.cpu + 1e-9) return `asks for ${demand.cpu} cores, this machine gives kaos ${this.capacity.cpu}`;
    if (demand.memoryBytes > this.capacity.memoryBytes) {
      return `asks for ${formatBytes(demand.memoryBytes)} of memory, this machine gives kaos ${formatBytes(this.capacity.memoryBytes)}`;
    }
    if (demand.gpu > this.capacity.gpus.length) return `asks for ${demand.gpu} GPUs, this machine has ${this.capacity.gpus.length}`;
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
        why: `each asks for ${demand.cpu} core${demand.cpu === 1 ? "" : "s"}, and this machine gives kaos ${this.capacity.cpu}`,
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
        why: `each asks for ${demand.gpu} GPU${demand.gpu === 1 ? "" : "s"}, and this machine has ${this.capacity.gpus.length}`,
        fix: "lower the pipeline's resources.gpu, or use a cluster stack with GPU nodes",
      });
    }
    const tightest = bounds.reduce((least, bound) => (bound.jobs < least.jobs ? bound : least));
    return tightest.jobs < demand.groupLimit ? tightest : undefined;
  }

  acquire(demand: Demand, signal?: AbortSignal): Promise<Lease> {
    const impossible = this.unsatisfiable(demand);
    if (impossible) return Promise.reject(new KaosError("RESOURCES_UNSATISFIABLE", impossible));
    return new Promise((grant, reject) => {
      const waiter: Waiter = { demand, grant, reject };
      this.waiting.push(waiter);
      signal?.addEventListener(
        "abort",
        () => {
          const index = this.waiting.indexOf(waiter);
          if (index >= 0) {
            this.waiting.splice(index, 1);
            reject(signal.reason);
          }
        },
        { once: true },
      );
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

  private dispatch(): void {
    for (let index = 0; index < this.waiting.length; ) {
      const waiter = this.waiting[index]!;
      if (!this.fits(waiter.demand)) {
        index += 1;
        continue;
      }
      this.waiting.splice(index, 1);
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
