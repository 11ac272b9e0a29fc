/**
 * The local backend's admission of jobs (ResourcePool): parallelism per
 * pipeline, cores, memory and GPUs, arrival order, and a queue as long as the
 * largest sweep.
 */
import { describe, expect, it } from "vitest";
import { type Demand, type Lease, ResourcePool } from "../src/backends/local/scheduler.js";
import { readsCounted } from "./helpers/counting.js";

const machine = { cpu: 2, memoryBytes: 8 << 30, gpus: [0, 1] };

function demand(group: string, groupLimit: number, resources: Partial<Pick<Demand, "cpu" | "memoryBytes" | "gpu">> = {}): Demand {
  return { cpu: 1, memoryBytes: 0, gpu: 0, ...resources, group, groupLimit };
}

/** Acquires every demand at once; `granted` lists the names in the order their leases came. */
function queueAll(pool: ResourcePool, demands: [string, Demand][], signal?: AbortSignal) {
  const granted: string[] = [];
  const leases = new Map<string, Lease>();
  const settled = demands.map(([name, asked]) =>
    pool.acquire(asked, signal).then(
      (lease) => {
        granted.push(name);
        leases.set(name, lease);
      },
      (error: unknown) => error,
    ),
  );
  return { granted, leases, settled };
}

/** Lets every lease already granted reach its holder. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

describe("the local resource pool", () => {
  it("starts jobs in arrival order within parallelism and cores, a smaller one passing a larger that waits for room", async () => {
    const pool = new ResourcePool(machine);
    const { granted, leases } = queueAll(pool, [
      ["a1", demand("a", 1)],
      ["a2", demand("a", 1)],
      ["big", demand("b", 1, { cpu: 2 })],
      ["c1", demand("c", 2)],
    ]);
    await settle();
    // a's parallelism is 1; big needs both cores, one is taken; c1 fits in what is left.
    expect(granted).toEqual(["a1", "c1"]);
    leases.get("a1")!.release();
    await settle();
    // a2 came before big and fits in the core a1 freed.
    expect(granted).toEqual(["a1", "c1", "a2"]);
    leases.get("a2")!.release();
    leases.get("c1")!.release();
    await settle();
    expect(granted).toEqual(["a1", "c1", "a2", "big"]);
  });

  it("hands out distinct GPUs and takes them back", async () => {
    const pool = new ResourcePool(machine);
    const { leases } = queueAll(pool, [
      ["one", demand("g", 3, { cpu: 0.5, gpu: 1 })],
      ["two", demand("g", 3, { cpu: 0.5, gpu: 1 })],
      ["three", demand("g", 3, { cpu: 0.5, gpu: 1 })],
    ]);
    await settle();
    expect([leases.get("one")?.gpus, leases.get("two")?.gpus, leases.has("three")]).toEqual([[0], [1], false]);
    leases.get("two")!.release();
    await settle();
    expect(leases.get("three")?.gpus).toEqual([1]);
  });

  it("drops a waiter whose signal aborts, before or while it waits, and starts the next", async () => {
    const pool = new ResourcePool(machine);
    const first = await pool.acquire(demand("p", 1));
    const cancelled = new AbortController();
    const waiting = pool.acquire(demand("p", 1), cancelled.signal);
    const next = pool.acquire(demand("p", 1));
    cancelled.abort(new Error("cancelled while queued"));
    await expect(waiting).rejects.toThrow("cancelled while queued");
    await expect(pool.acquire(demand("p", 1), cancelled.signal)).rejects.toThrow("cancelled while queued");
    first.release();
    await expect(next).resolves.toMatchObject({ gpus: [] });
  });

  it("looks at each waiting job a bounded number of times, however long the queue: a 100,000-job sweep is not quadratic", async () => {
    const jobs = 20_000;
    let reads = 0;
    // Every read of a demand's fields is counted: the work admission does, without a clock.
    const counted = (asked: Demand): Demand =>
      readsCounted(asked, () => {
        reads += 1;
      });
    const pool = new ResourcePool(machine);
    let done = 0;
    await Promise.all(
      Array.from({ length: jobs }, async () => {
        const lease = await pool.acquire(counted(demand("p", 2)));
        await Promise.resolve();
        done += 1;
        lease.release();
      }),
    );
    expect(done).toBe(jobs);
    expect(reads).toBeLessThan(jobs * 50);
  });
});
