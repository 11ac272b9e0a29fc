/**
 * The entry point of hash.ts's worker threads: it answers walk, hash and
 * seal check requests with tree-walk.ts, transferring the typed arrays of a
 * walk back rather than copying them.
 */
import { parentPort, workerData } from "node:worker_threads";
import { HASH_WORKER_MARK, WORKER_READY, runRequest, type WorkerRequest, type WorkerResult } from "./tree-walk.js";

function transferList(result: WorkerResult): ArrayBuffer[] {
  if (result.kind !== "walk") return [];
  return result.units.flatMap(
    (unit) => [unit.status.buffer, unit.modes.buffer, unit.ids.buffer, unit.times.buffer, unit.cacheRows.buffer] as ArrayBuffer[],
  );
}

if (parentPort !== null && workerData === HASH_WORKER_MARK) {
  const port = parentPort;
  port.on("message", (request: WorkerRequest) => {
    const result = runRequest(request);
    port.postMessage(result, transferList(result));
  });
  port.postMessage(WORKER_READY);
}
