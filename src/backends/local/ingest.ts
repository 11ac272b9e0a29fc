/**
 * The Ingest stage: brings a manifest's entries into the object store and
 * materializes them as a data directory of links.
 *
 * - An entry whose content hash is known (the manifest's `sha256`, else the
 *   lock's pin for the same URL) and already stored is only linked: a rerun
 *   with an unchanged manifest sends no request at all.
 * - Everything else is downloaded by a bounded pool (keep-alive sockets,
 *   `concurrency` transfers at once), streamed into `<objects>/tmp/` while
 *   being hashed, verified, then renamed into the store. Memory does not grow
 *   with file size. Entries with the same URL and expectations share one
 *   transfer; identical content from different URLs is stored once.
 * - Transient failures (connection errors, idle timeouts, 408, 429, 5xx) are
 *   retried with exponential backoff and jitter, honouring Retry-After. A
 *   transfer that dies mid-body keeps its partial file and resumes with
 *   `Range` (+ `If-Range` when the server gave a validator); a server that
 *   answers 200 instead starts over. Partial files with a validator survive the
 *   process, so an interrupted `kaos up` resumes too.
 * - The data directory: when it does not exist it is built beside itself and
 *   renamed into place once every entry is settled; when it exists it is
 *   reconciled in place, file by file (link under a temporary name, then
 *   rename), and files no longer in the manifest are removed. A file is only
 *   ever visible there with complete, verified content. Give each data key its
 *   own directory when jobs must never see it change.
 * - The lock (see manifest.ts) is rewritten, only when its content changes,
 *   with every entry that succeeded (and the old pins of those that failed).
 *   Content fetched again for a pinned entry (its object was deleted, or a
 *   fresh clone) must match the pin; accepting new content takes `refresh`.
 * - `refresh` asks the server whether each pinned entry changed: a
 *   conditional GET (If-None-Match / If-Modified-Since) when the pin recorded
 *   an ETag or Last-Modified, else a full download that is hashed and
 *   compared; file:// URLs are read again. Entries whose `sha256` is written
 *   in the manifest are fixed by it and not re-checked.
 *
 * Transfers run in worker threads that load only Node's built-ins and the
 * object store. Besides keeping the caller's event loop free, that matters
 * for speed: V8 counts the socket buffers a transfer churns through against
 * the old generation's limit, and in an isolate that has loaded a large
 * module graph (the CLI, zod, ...) that limit is reached every few dozen
 * megabytes, so full garbage collections ate a third of the CPU time. A lean
 * isolate reclaims the same buffers with cheap young-generation collections.
 * This module is therefore also the worker's entry point, and loads
 * manifest.js only when ingest() runs.
 */
import * as fs from "node:fs";
import { KaosError, describeError } from "../../core/errors.js";
import type { ManifestEntry, ManifestLock, ManifestLockEntry } from "../../core/manifest.js";
import type { ObjectStore } from "../../core/objects.js";
import { type FileUrlScope, redactUrl, sourceIdentity } from "../../core/urls.js";
import { DataTree } from "./data-tree.js";
import { abortReason, isAborted, pickValidators, withPartialLock, type TransferJob, type Validators } from "./fetch.js";
import { ProgressTracker, TransferPool, transferThreadsFor } from "./transfers.js";
import type { IngestProgress } from "../../core/events.js";

export type { IngestProgress };

export interface IngestOptions {
  entries: ManifestEntry[];
  manifestPath: string;
  objects: ObjectStore;
  /** Where the data tree is materialized (links to objects); files appear only once verified. */
  dataDir: string;
  /** Where `file:` URLs may read (see urls.ts): a URL outside it fails its entry, naming its manifest line. */
  fileScope: FileUrlScope;
  /** Re-check remote content (conditional requests with ETag/Last-Modified); changed content is fetched and re-pinned. */
  refresh?: boolean;
  /** Transfers at once (spread over up to four threads, one per four transfers and per core). Default 8. */
  concurrency?: number;
  /** Retries per transfer after failures that made no progress. Default 4. */
  retries?: number;
  /** No bytes for this long fails the attempt (retryable). Default 30000. */
  timeoutMs?: number;
  /** Default 5. */
  maxRedirects?: number;
  /** First backoff step; doubles per retry, with jitter. Default 500. */
  retryBaseMs?: number;
  /** Longest wait between attempts, Retry-After included. Default 60000. */
  retryMaxWaitMs?: number;
  onProgress?: (progress: IngestProgress) => void;
  /** Something worth telling while transfers run, such as a server asking kaos to wait before it retries. */
  onNotice?: (message: string) => void;
  signal?: AbortSignal;
}

export interface IngestFailure {
  path: string;
  url: string;
  error: string;
}

export interface IngestResult {
  dataKey: string;
  /** Entries whose content was transferred (or copied from a file URL). */
  downloaded: number;
  /** Entries served from the object store (including refreshes answered 304). */
  reused: number;
  /** Bytes received, retries included. */
  bytesDownloaded: number;
  failures: IngestFailure[];
}

/** A failure worth another attempt. */

async function runPool<T>(items: T[], concurrency: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++];
      if (item !== undefined) await work(item);
    }
  });
  await Promise.all(workers);
}

function lockEntryFor(url: string, hash: string, size: number, validators: Validators): ManifestLockEntry {
  const entry: ManifestLockEntry = { url, sha256: hash, size };
  if (validators.etag !== undefined) entry.etag = validators.etag;
  if (validators.lastModified !== undefined) entry.lastModified = validators.lastModified;
  return entry;
}

/** Entries that share one transfer: the same URL with the same expectations. */
interface PlannedTransfer {
  job: TransferJob;
  entries: ManifestEntry[];
}

export async function ingest(options: IngestOptions): Promise<IngestResult> {
  const { entries, manifestPath, objects, signal } = options;
  const { lockPathFor, manifestDataKey, pinFor, pinnedHashOf, readLock, serializeLock, writeLock } = await import("../../core/manifest.js");
  const refresh = options.refresh === true;
  const concurrency = Math.max(1, Math.floor(options.concurrency ?? 8));
  const oldLock = readLock(manifestPath);
  const lockFile = lockPathFor(manifestPath);
  const newEntries: Record<string, ManifestLockEntry> = {};
  const progress = new ProgressTracker(entries.length, options.onProgress);

  // Decide, entry by entry, between linking what is stored and fetching.
  const reusedEntries: { entry: ManifestEntry; hash: string }[] = [];
  const planned = new Map<string, PlannedTransfer>();
  // Each entry's pin in the old lock, looked up once: the reused entries, the failed ones and the new lock ask again.
  const oldPins = new Map<ManifestEntry, ManifestLockEntry | undefined>();
  for (const entry of entries) {
    const sameUrlPin = pinFor(entry, oldLock);
    oldPins.set(entry, sameUrlPin);
    const known = pinnedHashOf(entry, sameUrlPin);
    let expected: TransferJob["expected"];
    let conditional: TransferJob["conditional"];
    if (!refresh || entry.sha256 !== undefined) {
      if (known !== undefined && objects.has(known)) {
        reusedEntries.push({ entry, hash: known });
        continue;
      }
      if (known !== undefined) {
        expected =
          entry.sha256 !== undefined
            ? { hash: known, from: "manifest", where: `${entry.file}:${entry.line}` }
            : { hash: known, from: "lock", where: lockFile };
      }
    } else if (
      sameUrlPin !== undefined &&
      known !== undefined &&
      objects.has(known) &&
      (sameUrlPin.etag !== undefined || sameUrlPin.lastModified !== undefined)
    ) {
      conditional = { ...pickValidators(sameUrlPin), pinned: sameUrlPin };
    }
    const key = `${entry.url}\0${expected?.hash ?? ""}\0${entry.size ?? ""}\0${conditional === undefined ? "" : "c"}`;
    const existing = planned.get(key);
    if (existing !== undefined) {
      existing.entries.push(entry);
      continue;
    }
    const id = planned.size;
    planned.set(key, {
      job: { id, url: entry.url, where: `${entry.file}:${entry.line}`, expected, size: entry.size, conditional },
      entries: [entry],
    });
    progress.setTotal(id, entry.size ?? sameUrlPin?.size);
    progress.setDone(id, 0);
  }
  const transfers = [...planned.values()];

  const tree = DataTree.prepare(options.dataDir, new Set(entries.map((entry) => entry.path)));
  const thread =
    transfers.length === 0
      ? undefined
      : new TransferPool(
          {
            objectsDir: objects.dir,
            fileScope: options.fileScope,
            retries: Math.max(0, Math.floor(options.retries ?? 4)),
            timeoutMs: options.timeoutMs ?? 30_000,
            maxRedirects: options.maxRedirects ?? 5,
            retryBaseMs: options.retryBaseMs ?? 500,
            retryMaxWaitMs: options.retryMaxWaitMs ?? 60_000,
            concurrency,
          },
          progress,
          transferThreadsFor(Math.min(concurrency, transfers.length)),
          options.onNotice,
        );
  const onAbort = (): void => thread?.abort();
  signal?.addEventListener("abort", onAbort, { once: true });

  const failures: IngestFailure[] = [];
  let downloaded = 0;
  let reused = 0;
  let committed = false;
  try {
    for (const { entry, hash } of reusedEntries) {
      tree.place(objects, hash, entry.path);
      const locked = oldPins.get(entry);
      newEntries[entry.path] =
        locked !== undefined && locked.sha256 === hash ? locked : lockEntryFor(entry.url, hash, fs.statSync(objects.pathOf(hash)).size, {});
      reused++;
      progress.filesDone++;
    }
    progress.emit(true);

    await runPool(transfers, thread?.capacity ?? 1, async ({ job, entries: sharing }) => {
      if (isAborted(signal) || thread === undefined) return;
      try {
        const outcome = await withPartialLock(sourceIdentity(job.url), () => thread.run(job));
        for (const entry of sharing) {
          tree.place(objects, outcome.hash, entry.path);
          newEntries[entry.path] = lockEntryFor(entry.url, outcome.hash, outcome.size, outcome.validators);
          if (outcome.notModified) reused++;
          else downloaded++;
        }
        progress.setDone(job.id, outcome.notModified ? 0 : outcome.size);
        if (outcome.notModified) progress.setTotal(job.id, 0);
      } catch (error) {
        if (isAborted(signal)) return;
        const message = describeError(error);
        for (const entry of sharing) {
          failures.push({ path: entry.path, url: redactUrl(entry.url), error: message });
          // A failed refresh leaves the pinned content in place; anything else leaves no file.
          const locked = oldPins.get(entry);
          if (locked !== undefined && objects.has(locked.sha256)) tree.place(objects, locked.sha256, entry.path);
          else tree.remove(entry.path);
        }
      } finally {
        progress.filesDone += sharing.length;
        progress.emit(true);
      }
    });

    // Entries that failed or never ran keep their old pin while the URL is unchanged.
    for (const entry of entries) {
      const locked = oldPins.get(entry);
      if (newEntries[entry.path] === undefined && locked !== undefined) newEntries[entry.path] = locked;
    }
    const lock: ManifestLock = { version: 1, entries: newEntries };
    let previous: string | undefined;
    try {
      previous = fs.readFileSync(lockFile, "utf8");
    } catch {
      previous = undefined;
    }
    if (previous !== serializeLock(lock)) writeLock(manifestPath, lock);

    if (isAborted(signal)) throw abortReason(signal);
    tree.commit();
    committed = true;

    if (failures.length > 0) {
      failures.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
      const lines = failures.map((failure) => `  ${failure.path} (${failure.url}): ${failure.error}`);
      throw new KaosError(
        "INGEST_FAILED",
        `${failures.length} of ${entries.length} manifest entries of ${manifestPath} failed:\n${lines.join("\n")}`,
        { hint: "The other entries are stored and pinned; fix or retry these and run again — only they are fetched." },
      );
    }
    const dataKey = manifestDataKey(entries, lock);
    if (dataKey === undefined) throw new KaosError("INGEST_FAILED", `${manifestPath}: some entries have no content hash after ingest`);
    return { dataKey, downloaded, reused, bytesDownloaded: progress.received, failures };
  } finally {
    signal?.removeEventListener("abort", onAbort);
    if (!committed) tree.abandon();
    await thread?.close();
  }
}
